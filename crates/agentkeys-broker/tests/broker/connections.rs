//! The listener's own limits: a header-read timeout (a client trickling its request line and
//! headers is disconnected), a request timeout (so is one trickling its body) and a cap on
//! connections served at once (the rest wait).
//!
//! Raw sockets on purpose: an HTTP client cannot trickle a request, hold a connection idle or
//! leave it half-written, which is what these limits are about.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::app::TestApp;

/// Long enough for any machine; the tests assert what happens, not how fast.
const PATIENCE: Duration = Duration::from_secs(30);

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.url.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// Reads until the server closes the connection; `false` if it is still open after PATIENCE.
async fn closed_by_server(stream: &mut TcpStream, mut trickle: bool) -> bool {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    while started.elapsed() < PATIENCE {
        if trickle && stream.write_all(b"a").await.is_err() {
            // The server is gone; the read below sees EOF or a reset.
            trickle = false;
        }
        match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // An error response (e.g. 408) before the close is fine.
            Ok(Ok(_)) => {}
            Err(_) => {}
        }
    }
    false
}

/// Sends one GET /healthz on `stream` and reads its whole response.
async fn healthz(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: broker\r\n\r\n")
        .await
        .unwrap();
    read_response(stream).await
}

async fn read_response(stream: &mut TcpStream) -> String {
    let mut text = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut buf))
            .await
            .expect("a response")
            .unwrap();
        assert!(n > 0, "closed before a full response");
        text.extend_from_slice(&buf[..n]);
        let s = String::from_utf8_lossy(&text).into_owned();
        if let Some((head, body)) = s.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= length {
                return s;
            }
        }
    }
}

#[tokio::test]
async fn a_client_trickling_its_headers_is_disconnected_after_the_header_timeout() {
    let app = TestApp::start_with(|s| s.header_read_timeout = Duration::from_secs(1)).await;
    let mut slow = connect(&app).await;
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: broker\r\nX-Slow: ")
        .await
        .unwrap();
    // One more header byte every 200 ms: the request never completes, the timeout still runs.
    assert!(
        closed_by_server(&mut slow, true).await,
        "still connected after {PATIENCE:?}"
    );

    // A client that connects and says nothing is closed too, and so is an idle kept-alive one.
    let mut silent = connect(&app).await;
    assert!(closed_by_server(&mut silent, false).await);
    let mut idle = connect(&app).await;
    assert!(healthz(&mut idle).await.starts_with("HTTP/1.1 200"));
    assert!(closed_by_server(&mut idle, false).await);

    // Meanwhile the broker serves everyone else.
    let mut fresh = connect(&app).await;
    assert!(healthz(&mut fresh).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_free_slot_while_existing_ones_keep_working() {
    let app = TestApp::start_with(|s| {
        s.max_connections = 2;
        s.header_read_timeout = Duration::from_secs(60);
    })
    .await;
    let mut a = connect(&app).await;
    let mut b = connect(&app).await;
    assert!(healthz(&mut a).await.starts_with("HTTP/1.1 200"));
    assert!(healthz(&mut b).await.starts_with("HTTP/1.1 200"));

    // A third connection is queued by the kernel, not served (and not refused).
    let mut c = connect(&app).await;
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: broker\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), c.read(&mut buf))
            .await
            .is_err(),
        "the third connection must wait while two are open"
    );

    // The connections already served keep working.
    assert!(healthz(&mut a).await.starts_with("HTTP/1.1 200"));

    // One closes: the waiting one is served.
    drop(b);
    let response = read_response(&mut c).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

#[tokio::test]
async fn a_client_trickling_its_body_is_answered_408_and_disconnected() {
    let app = TestApp::start_with(|s| s.request_timeout = Duration::from_secs(1)).await;
    let mut slow = connect(&app).await;
    slow.write_all(
        b"POST /v1/auth/wallet/challenge HTTP/1.1\r\nHost: broker\r\n\
          Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{",
    )
    .await
    .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let closed = loop {
        assert!(started.elapsed() < PATIENCE, "still connected");
        let _ = slow.write_all(b" ").await;
        match tokio::time::timeout(Duration::from_millis(200), slow.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    };
    assert!(closed);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""error":"request_timeout""#), "{answer}");
}
