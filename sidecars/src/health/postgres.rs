//! `postgres://` checks: connect and run a query (default `SELECT 1`). A fresh connection
//! each time: "accepts a new connection and answers" is what readiness means for an app
//! that opens connections (a full `max_connections` fails it, as it fails the app).

use super::CheckError;

/// Connects without TLS (the database is reached over the pod network or localhost) and
/// runs `query` with the simple-query protocol.
pub async fn check(config: &tokio_postgres::Config, query: &str) -> Result<(), CheckError> {
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(CheckError::Postgres)?;
    // The connection does the IO; it ends when the client is dropped.
    let driver = tokio::spawn(connection);
    let result = client.simple_query(query).await.map(drop);
    drop(client);
    let _ = driver.await;
    result.map_err(CheckError::Postgres)
}
