//! Test helpers: a canned-answer HTTP server on loopback, standing in for STS or S3.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::thread::JoinHandle;
use std::time::Duration;

/// Serves one connection per canned `(status, body)` answer, in order, then stops. Joining the
/// handle gives each request as text (request line, headers, body).
pub struct FakeServer {
    pub url: String,
    handle: JoinHandle<Vec<String>>,
}

impl FakeServer {
    pub fn start(answers: Vec<(u16, String)>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let handle = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for (status, body) in answers {
                let Ok((stream, _)) = listener.accept() else {
                    break;
                };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let mut reader = BufReader::new(stream);
                let mut request = String::new();
                let mut content_length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':')
                        && k.eq_ignore_ascii_case("content-length")
                    {
                        content_length = v.trim().parse().unwrap_or(0);
                    }
                    request.push_str(&line);
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body_in = vec![0u8; content_length];
                let _ = reader.read_exact(&mut body_in);
                request.push_str(&String::from_utf8_lossy(&body_in));
                seen.push(request);
                let mut stream = reader.into_inner();
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.flush();
            }
            seen
        });
        Self { url, handle }
    }

    /// The requests served, once all answers are used.
    pub fn requests(self) -> Vec<String> {
        self.handle.join().expect("server thread")
    }
}
