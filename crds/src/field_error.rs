//! Validation errors that name the field they are about, as `kubectl` users expect
//! (`spec.replicas: must be >= 0`).

use std::fmt;

/// One invalid field: its path from the object root and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path from the object root, e.g. `spec.autoscaling.minReplicas`; empty for a
    /// rule on the whole object, whose message names the fields it is about.
    pub field: String,
    /// What is wrong, phrased so a person can fix it.
    pub message: String,
}

impl FieldError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A rule on the whole object names its field in its message.
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// Every invalid field of one object (never empty), in the order they were found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldErrors(pub Vec<FieldError>);

impl fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for FieldErrors {}

impl FieldErrors {
    /// `Ok(())` when nothing was found, the errors otherwise.
    pub fn into_result(errors: Vec<FieldError>) -> Result<(), FieldErrors> {
        if errors.is_empty() {
            Ok(())
        } else {
            Err(FieldErrors(errors))
        }
    }
}
