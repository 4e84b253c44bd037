//! `exec:` checks: `sh -c COMMAND` exits 0. The shell lets a check be a pipeline
//! (`pg_isready -q || test -f /tmp/maintenance`), as people write them in probes.

use std::process::Stdio;

use super::CheckError;

/// Runs the command; on failure the error carries the exit status and the last line of
/// stderr. The child is killed if the check's deadline drops this future.
pub async fn check(command: &str) -> Result<(), CheckError> {
    let output = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
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
