//! YAML config files, parsed once at start-up into typed structs.

use std::path::Path;

use serde::de::DeserializeOwned;

use super::Error;

/// Reads and parses a YAML config file. Errors name the file and, for parse errors, the
/// line and column the parser stopped at.
pub fn load_yaml<T: DeserializeOwned>(path: &Path) -> Result<T, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_yaml(path, &text)
}

/// Parses YAML text that came from `path` (used in the error only).
pub fn parse_yaml<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, Error> {
    serde_norway::from_str(text).map_err(|err| Error::Config {
        path: path.to_owned(),
        message: err.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        #[allow(dead_code)]
        listen: String,
    }

    #[test]
    fn a_bad_field_is_named_with_file_and_line() {
        let err = parse_yaml::<Sample>(
            Path::new("/etc/rigging/shard.yaml"),
            "listen: x\nlisen: y\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("/etc/rigging/shard.yaml"), "{err}");
        assert!(err.contains("lisen"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }
}
