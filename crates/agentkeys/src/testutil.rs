//! Test helpers: a canned-answer HTTP server on loopback (axum), standing in for STS, S3 or the
//! broker.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

/// Answers each request with the next canned `(status, body)`, in order; a request past the
/// last answer gets a 599 that no client mistakes for one of them. [`FakeServer::requests`]
/// gives each request as text (request line, headers, body). Must be started inside a Tokio
/// runtime (every user is a `#[tokio::test]`); the server ends with the test's runtime.
pub struct FakeServer {
    pub url: String,
    shared: Arc<Shared>,
}

struct Shared {
    answers: Mutex<VecDeque<(u16, String)>>,
    seen: Mutex<Vec<String>>,
}

impl FakeServer {
    pub fn start(answers: Vec<(u16, String)>) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        let shared = Arc::new(Shared {
            answers: Mutex::new(answers.into()),
            seen: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .fallback(answer)
            .with_state(Arc::clone(&shared));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, shared }
    }

    /// The requests served so far, in order.
    pub fn requests(self) -> Vec<String> {
        self.shared.seen.lock().expect("seen").clone()
    }
}

async fn answer(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut request = format!("{method} {uri} HTTP/1.1\r\n");
    for (name, value) in &headers {
        request.push_str(&format!(
            "{name}: {}\r\n",
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    request.push_str("\r\n");
    request.push_str(&String::from_utf8_lossy(&body));
    shared.seen.lock().expect("seen").push(request);
    let next = shared.answers.lock().expect("answers").pop_front();
    let (status, body) = next.unwrap_or((599, "no canned answer left".to_owned()));
    let status = StatusCode::from_u16(status).expect("a valid status");
    (status, [(header::CONTENT_TYPE, "text/xml")], body).into_response()
}
