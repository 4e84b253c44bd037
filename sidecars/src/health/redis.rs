//! `redis://` checks: `PING` answered by `PONG`, after `AUTH` when the URL has
//! credentials (a Redis that refuses our password is not one the app can use either).

use std::time::Duration;

use super::CheckError;
use crate::probe::{Conn, RedisReply, Target};

/// Connects, authenticates and pings.
pub async fn check(target: &Target, timeout: Duration) -> Result<(), CheckError> {
    let mut conn = Conn::redis_login(target, timeout).await?;
    match conn.redis(&[b"PING"], timeout).await? {
        RedisReply::Simple(b"PONG") => Ok(()),
        other => Err(CheckError::Unexpected(format!("PING answered {other:?}"))),
    }
}
