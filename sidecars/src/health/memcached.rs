//! `memcached://` checks: `version` answered by `VERSION …`.

use std::time::Duration;

use super::CheckError;
use crate::probe::{Conn, Target};

/// Connects and asks for the version.
pub async fn check(target: &Target, timeout: Duration) -> Result<(), CheckError> {
    let mut conn = Conn::connect(&target.addr, timeout).await?;
    let reply = conn.memcached(b"version", timeout).await?;
    if reply.starts_with(b"VERSION ") {
        Ok(())
    } else {
        Err(CheckError::Unexpected(format!(
            "version answered {:?}",
            String::from_utf8_lossy(reply.trim_ascii_end())
        )))
    }
}
