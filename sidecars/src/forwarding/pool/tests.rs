use std::sync::atomic::AtomicUsize;

use http_body_util::{BodyExt, Either, Empty, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

fn get(path: &str) -> Request<RequestBody> {
    Request::builder()
        .uri(path)
        .header("host", "upstream")
        .body(Either::Right(Full::new(Bytes::new())))
        .unwrap()
}

/// A server that answers every request on a connection with `200 ok`, then closes the
/// connection once it has been idle for `idle` (Redis's `timeout`, nginx's
/// `keepalive_timeout`); counts the connections it accepted.
async fn closing_server(idle: Duration) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                loop {
                    match tokio::time::timeout(idle, socket.read(&mut buf)).await {
                        Ok(Ok(n)) if n > 0 => {
                            let _ = socket
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                                .await;
                        }
                        _ => return, // idle too long, or the client went away
                    }
                }
            });
        }
    });
    (address, accepted)
}

#[tokio::test]
async fn an_idle_connection_the_server_closed_costs_the_client_nothing() {
    let (address, accepted) = closing_server(Duration::from_millis(100)).await;
    let pool = Pool::new(address, PoolConfig::default());
    let first = pool.send(get("/")).await.unwrap();
    assert_eq!(first.into_body().collect().await.unwrap().to_bytes(), "ok");
    assert_eq!(pool.stats().idle, 1);

    // The server closes the idle connection; the next request must not see it.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let second = pool
        .send(get("/"))
        .await
        .expect("a closed idle connection was reused");
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(second.into_body().collect().await.unwrap().to_bytes(), "ok");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_connection_is_reused_once_its_body_was_read() {
    let (address, accepted) = closing_server(Duration::from_secs(10)).await;
    let pool = Pool::new(address, PoolConfig::default());
    for _ in 0..20 {
        let response = pool.send(get("/")).await.unwrap();
        response.into_body().collect().await.unwrap();
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_idle_list_is_capped() {
    let (address, _) = closing_server(Duration::from_secs(10)).await;
    let config = PoolConfig {
        max_idle: 3,
        ..PoolConfig::default()
    };
    let pool = Pool::new(address, config);
    let burst = (0..20).map(|_| pool.send(get("/")));
    let responses = futures::future::try_join_all(burst).await.unwrap();
    for response in responses {
        response.into_body().collect().await.unwrap();
    }
    // Every connection closed past the cap is counted out by its task.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stats = pool.stats();
    assert_eq!(stats.idle, 3, "{stats:?}");
    assert_eq!(stats.open, 3, "{stats:?}");
}

#[tokio::test]
async fn past_its_connection_and_pending_limits_a_request_fails_at_once() {
    // A server that takes a second to answer.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while let Ok(n) = socket.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let _ = socket
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .await;
                }
            });
        }
    });
    let config = PoolConfig {
        max_connections: 1,
        max_pending: 1,
        ..PoolConfig::default()
    };
    let pool = Pool::new(address, config);
    let busy = tokio::spawn({
        let pool = pool.clone();
        async move { pool.send(get("/")).await.map(|r| r.status()) }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let waiting = tokio::spawn({
        let pool = pool.clone();
        async move { pool.send(get("/")).await.map(|r| r.status()) }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(pool.stats().pending, 1);
    let refused = pool.send(get("/")).await.unwrap_err().error;
    assert!(matches!(refused, SendError::Overloaded { .. }), "{refused}");
    assert!(!refused.may_have_been_sent());
    // The one that waited gets the connection when the first is done.
    assert_eq!(busy.await.unwrap().unwrap(), StatusCode::OK);
    assert_eq!(waiting.await.unwrap().unwrap(), StatusCode::OK);
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error_that_was_never_sent() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    drop(listener);
    let pool = Pool::new(address, PoolConfig::default());
    let failed = pool.send(get("/")).await.unwrap_err();
    assert!(failed.unsent.is_some(), "the request is given back");
    let err = failed.error;
    assert!(matches!(err, SendError::Connect { .. }), "{err}");
    assert!(!err.may_have_been_sent());
    let _ = Empty::<Bytes>::new();
}
