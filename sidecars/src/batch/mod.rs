//! Coordinated batch (book ch. 12): a WorkQueue's items each store an output, and one
//! reduce turns a run's outputs into its result. Two subcommands, both on the broker
//! layer's [`OutputStore`](crate::broker::OutputStore), so that outputs never pass
//! through a Kubernetes object (an etcd value holds 1.5 MiB; a run may have thousands of
//! items):
//! - `output` ([`output::run`]): the native sidecar of a worker pod, which stores the
//!   worker's output file once the worker has exited (the kubelet's SIGTERM says so);
//! - `reduce` ([`reduce::run`]): the reduce Job's container, which streams a run's
//!   outputs through a built-in reducer and stores the result exactly once.
//!
//! See `docs/sidecars/batch.md`.

mod config_map;
pub mod output;
pub mod reduce;
pub mod reducers;

use std::path::Path;

/// Command-line arguments of `rigging-sidecar output`: the contract type the operator
/// renders.
pub use rigging_crds::sidecar::batch::OutputArgs;
/// Command-line arguments of `rigging-sidecar reduce`: the contract type the operator
/// renders.
pub use rigging_crds::sidecar::batch::ReduceArgs;

/// The most the kubelet keeps of a termination message.
const TERMINATION_MESSAGE_MAX: usize = 4096;

/// Writes `message` to the termination log at `path`, cut to what the kubelet keeps. A
/// failure is logged, not returned: the outcome is also in the exit code and the logs, and
/// outside a container the default path may not be writable.
async fn write_termination_log(path: &Path, message: &str) {
    let message = cut(message, TERMINATION_MESSAGE_MAX);
    if let Err(err) = tokio::fs::write(path, message).await {
        tracing::warn!(path = %path.display(), error = %err, "cannot write the termination message");
    }
}

/// `text`, cut to at most `max` bytes on a character boundary.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutting_keeps_whole_characters() {
        assert_eq!(cut("abc", 10), "abc");
        assert_eq!(cut("abcdef", 3), "abc");
        assert_eq!(cut("aé", 2), "a");
    }
}
