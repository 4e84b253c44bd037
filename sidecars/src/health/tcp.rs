//! `tcp://` checks: something accepts a connection.

use super::CheckError;

/// Opens (and closes) one connection to `addr`.
pub async fn check(addr: &str) -> Result<(), CheckError> {
    tokio::net::TcpStream::connect(addr)
        .await
        .map(drop)
        .map_err(|source| CheckError::Connect {
            addr: addr.to_owned(),
            source,
        })
}
