//! `exec:` checks: COMMAND, split on whitespace into a program and its arguments, run
//! directly (no shell: Rigging's image has none), exits 0. The program must exist in the
//! monitor's own container, which is why the operator does not accept `exec:` checks for
//! the monitor it places from the distroless image.

use std::process::Stdio;

use super::CheckError;

/// Runs the command; on failure the error carries the exit status and the last line of
/// stderr. The child is killed if the check's deadline drops this future.
pub async fn check(command: &str) -> Result<(), CheckError> {
    let mut argv = command.split_whitespace();
    let program = argv.next().unwrap_or_default();
    let output = tokio::process::Command::new(program)
        .args(argv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(CheckError::Spawn)?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    Err(CheckError::Exit {
        status: output.status.to_string(),
        stderr: last.chars().take(200).collect(),
    })
}
