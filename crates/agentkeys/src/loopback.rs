//! The RFC 8252 loopback redirect of `agentkeys login oidc`: a listener on 127.0.0.1 that
//! receives the one-time code when the broker sends the user's browser back to this command.
//!
//! Hand-written on purpose: it answers one kind of request (`GET /callback?code=…`) from one
//! local browser, and a server framework would add far more than it would check. The code it
//! receives is useless without the verifier this command keeps, so a stray local request can
//! at worst end the wait with a wrong code, which the broker refuses.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::error::{Error, Result};

/// The path the broker redirects to.
pub const CALLBACK_PATH: &str = "/callback";
/// Longest request head read from the browser.
const MAX_HEAD: usize = 8 * 1024;
/// How long one connection may take to send its request line.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

const DONE_PAGE: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
    <title>AgentKeys</title></head><body style=\"font-family: sans-serif; max-width: 36em; \
    margin: 4em auto\"><h1>AgentKeys</h1><p>Back in your terminal: the sign-in finishes there. \
    You can close this page.</p></body></html>";

pub struct Loopback {
    listener: TcpListener,
    redirect_uri: String,
}

impl Loopback {
    /// Binds an OS-chosen port on 127.0.0.1.
    pub async fn bind() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await.map_err(|e| {
            Error::SignIn(format!("cannot listen on 127.0.0.1 for the redirect: {e}"))
        })?;
        let port = listener
            .local_addr()
            .map_err(|e| Error::SignIn(format!("cannot listen on 127.0.0.1: {e}")))?
            .port();
        Ok(Self {
            listener,
            redirect_uri: format!("http://127.0.0.1:{port}{CALLBACK_PATH}"),
        })
    }

    pub fn redirect_uri(&self) -> &str {
        &self.redirect_uri
    }

    /// Waits for the browser's `GET /callback?code=…` and answers it with a page that sends
    /// the user back to the terminal. Other requests (a favicon, a probe) get a 404 and the
    /// wait goes on. Returns the code as sent.
    pub async fn wait_for_code(&self) -> Result<String> {
        loop {
            let Ok((stream, _)) = self.listener.accept().await else {
                continue;
            };
            if let Some(code) = serve_one(stream).await {
                return Ok(code);
            }
        }
    }
}

async fn serve_one(mut stream: TcpStream) -> Option<String> {
    let head = tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream))
        .await
        .ok()??;
    let code = code_of(&head);
    let (status, body) = match code {
        Some(_) => ("200 OK", DONE_PAGE),
        None => ("404 Not Found", "not found"),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/html; charset=utf-8\r\ncache-control: no-store\r\n\
         referrer-policy: no-referrer\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
    code
}

async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() + n > MAX_HEAD {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(buf).ok()
}

/// The `code` of a `GET /callback?…` request line, if that is what the head starts with.
fn code_of(head: &str) -> Option<String> {
    let line = head.lines().next()?;
    let target = line.strip_prefix("GET ")?.split(' ').next()?;
    let query = target.strip_prefix(CALLBACK_PATH)?.strip_prefix('?')?;
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("code="))
        .filter(|c| !c.is_empty() && c.len() <= 64)
        .map(|c| c.replace("%2D", "-").replace("%2d", "-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_callback_with_a_code_counts() {
        assert_eq!(
            code_of("GET /callback?code=ABCD-EFGH HTTP/1.1\r\nHost: x\r\n\r\n").as_deref(),
            Some("ABCD-EFGH")
        );
        assert_eq!(
            code_of("GET /callback?x=1&code=ABCD%2DEFGH HTTP/1.1\r\n\r\n").as_deref(),
            Some("ABCD-EFGH")
        );
        for other in [
            "GET /favicon.ico HTTP/1.1\r\n\r\n",
            "GET /callback HTTP/1.1\r\n\r\n",
            "GET /callback?code= HTTP/1.1\r\n\r\n",
            "POST /callback?code=ABCD-EFGH HTTP/1.1\r\n\r\n",
            "GET /callbackx?code=A HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(code_of(other), None, "{other:?}");
        }
    }

    #[tokio::test]
    async fn a_browser_redirect_delivers_the_code_and_gets_a_page() {
        let loopback = Loopback::bind().await.expect("bind");
        let uri = loopback.redirect_uri().to_owned();
        assert!(
            agentkeys_types::login::check_loopback_redirect(&uri).is_ok(),
            "{uri}"
        );
        let client = reqwest::Client::new();
        let fetch = tokio::spawn(async move {
            // A stray request first: answered 404, the wait goes on.
            let stray = client
                .get(uri.replace("/callback", "/favicon.ico"))
                .send()
                .await
                .expect("stray");
            let page = client
                .get(format!("{uri}?code=ABCD-EFGH"))
                .send()
                .await
                .expect("callback");
            (
                stray.status().as_u16(),
                page.status().as_u16(),
                page.text().await.expect("body"),
            )
        });
        let code = loopback.wait_for_code().await.expect("code");
        assert_eq!(code, "ABCD-EFGH");
        let (stray, status, body) = fetch.await.expect("join");
        assert_eq!((stray, status), (404, 200));
        assert!(body.contains("terminal"), "{body}");
    }
}
