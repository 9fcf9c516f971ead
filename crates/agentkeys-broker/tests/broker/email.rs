//! Email magic-link sign-in and identity linking, against a real SMTP server (Python's
//! aiosmtpd, installed into a venv under the cargo target dir on first use).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use agentkeys_broker::config::EmailDelivery;
use agentkeys_broker::mailer::SmtpSettings;
use agentkeys_types::OmniAccount;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::app::{TestApp, error_of};

/// A real SMTP server writing every message into a maildir.
struct SmtpSink {
    child: Child,
    port: u16,
    maildir: tempfile::TempDir,
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn venv_python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("smtp-venv");
            let python = dir.join("bin/python");
            let stamp = dir.join(".requirements");
            let wanted = include_str!("smtp-requirements.txt");
            if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted) {
                let _ = std::fs::remove_dir_all(&dir);
                let ok = Command::new("python3")
                    .arg("-m")
                    .arg("venv")
                    .arg(&dir)
                    .status();
                assert!(
                    ok.is_ok_and(|s| s.success()),
                    "python3 -m venv failed: install python3-venv"
                );
                let req = Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/broker/smtp-requirements.txt");
                let ok = Command::new(&python)
                    .args([
                        "-m",
                        "pip",
                        "install",
                        "--quiet",
                        "--disable-pip-version-check",
                        "-r",
                    ])
                    .arg(req)
                    .status();
                assert!(
                    ok.is_ok_and(|s| s.success()),
                    "pip install of aiosmtpd failed (PyPI reachable?)"
                );
                std::fs::write(&stamp, wanted).unwrap();
            }
            python
        })
        .clone()
}

impl SmtpSink {
    fn start() -> Self {
        let python = venv_python();
        let maildir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(python)
            .args([
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &format!("127.0.0.1:{port}"),
                "-c",
                "aiosmtpd.handlers.Mailbox",
            ])
            .arg(maildir.path().join("mail"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "aiosmtpd did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            port,
            maildir,
        }
    }

    fn settings(&self) -> EmailDelivery {
        EmailDelivery::Smtp(SmtpSettings {
            host: "127.0.0.1".into(),
            port: self.port,
            tls: "none".into(),
            username: None,
            password: None,
            from: "AgentKeys <no-reply@agentkeys.test>".into(),
        })
    }

    /// Waits for the `n`th message (1-based) and returns it raw.
    async fn message(&self, n: usize) -> String {
        let dir = self.maildir.path().join("mail/new");
        let started = Instant::now();
        loop {
            let mut files: Vec<_> = std::fs::read_dir(&dir)
                .map(|d| d.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            files.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
            if files.len() >= n {
                return std::fs::read_to_string(&files[n - 1]).unwrap();
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no mail #{n} arrived"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The text of a message: its quoted-printable transfer encoding undone (long lines, such as
/// the link, are wrapped and `=` is escaped).
fn decoded(message: &str) -> String {
    let joined = message.replace("=\r\n", "").replace("=\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'='
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&joined[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The token in a message's landing-page link.
fn link_token(message: &str, issuer: &str) -> String {
    let message = decoded(message);
    let prefix = format!("{issuer}/auth/email/landing#token=");
    let start = message
        .find(&prefix)
        .unwrap_or_else(|| panic!("no link in {message}"))
        + prefix.len();
    message[start..start + 43].to_owned()
}

async fn start(app: &TestApp, email: &str) -> String {
    let r = app
        .post_json("/v1/auth/email/start", json!({"email": email}))
        .await;
    let status = r.status();
    assert_eq!(status, StatusCode::OK, "{:?}", r.text().await);
    r.json::<Value>().await.unwrap()["request_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn consume(app: &TestApp, token: &str) -> reqwest::Response {
    app.post_json("/v1/auth/email/consume", json!({"token": token}))
        .await
}

async fn status(app: &TestApp, request_id: &str) -> reqwest::Response {
    app.get(&format!("/v1/auth/email/status/{request_id}"))
        .await
}

#[tokio::test]
async fn an_emailed_link_signs_in_once() {
    let smtp = SmtpSink::start();
    let app = TestApp::start_with(|s| s.email = Some(smtp.settings())).await;
    let request_id = start(&app, "  Alice@Example.COM ").await;
    assert_eq!(
        status(&app, &request_id).await.status(),
        StatusCode::ACCEPTED
    );

    let mail = smtp.message(1).await;
    assert!(mail.contains("To: alice@example.com"), "{mail}");
    assert!(mail.contains("Subject: Sign in to AgentKeys"), "{mail}");
    let token = link_token(&mail, &app.url);

    // The landing page consumes the fragment's token with its own script.
    let page = app.get("/auth/email/landing").await;
    assert_eq!(page.headers()["referrer-policy"], "no-referrer");
    assert!(
        page.text()
            .await
            .unwrap()
            .contains("/auth/email/landing.js")
    );
    assert!(
        app.get("/auth/email/landing.js")
            .await
            .text()
            .await
            .unwrap()
            .contains("/v1/auth/email/consume")
    );

    assert_eq!(consume(&app, &token).await.status(), StatusCode::OK);
    assert_eq!(
        error_of(consume(&app, &token).await).await.0,
        StatusCode::NOT_FOUND,
        "single use"
    );

    let r = status(&app, &request_id).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "approved");
    let expected = OmniAccount::derive("email", "alice@example.com");
    assert_eq!(body["session"]["omni_account"], expected.as_str());
    assert_eq!(body["session"]["wallet"], Value::Null);
    let token = body["session"]["session_token"].as_str().unwrap();
    app.mint_jwt(token).await;
    assert_eq!(
        error_of(status(&app, &request_id).await).await.0,
        StatusCode::CONFLICT,
        "collected once"
    );

    // Secrets never reach the audit log.
    let audit = serde_json::to_string(&app.audit().await).unwrap();
    assert!(!audit.contains(&request_id) && !audit.contains(token));
    let kinds: Vec<String> = app.audit().await.into_iter().map(|e| e.kind).collect();
    for k in [
        "sign_in.email.requested",
        "sign_in.email.verified",
        "sign_in.email",
    ] {
        assert!(kinds.iter().any(|x| x == k), "{k}: {kinds:?}");
    }
}

#[tokio::test]
async fn a_linked_email_signs_in_as_its_wallet_master() {
    let smtp = SmtpSink::start();
    let app = TestApp::start_with(|s| s.email = Some(smtp.settings())).await;
    let (_, master) = app.sign_in().await;

    let r = app
        .http
        .post(format!("{}/v1/identities/email", app.url))
        .bearer_auth(&master.session_token)
        .json(&json!({"email": "bob@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let link_request = r.json::<Value>().await.unwrap()["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mail = smtp.message(1).await;
    assert!(mail.contains("Link this address"), "{mail}");
    consume(&app, &link_token(&mail, &app.url)).await;
    let linked: Value = status(&app, &link_request).await.json().await.unwrap();
    assert_eq!(linked["status"], "linked");
    assert_eq!(linked["identity"]["identity_value"], "bob@example.com");

    let list: Value = app
        .http
        .get(format!("{}/v1/identities", app.url))
        .bearer_auth(&master.session_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["identities"][0]["identity_type"], "email");

    // Signing in by the linked address yields the wallet master's session.
    let request_id = start(&app, "bob@example.com").await;
    consume(&app, &link_token(&smtp.message(2).await, &app.url)).await;
    let body: Value = status(&app, &request_id).await.json().await.unwrap();
    assert_eq!(
        body["session"]["omni_account"],
        master.omni_account.as_str()
    );
    assert_eq!(
        body["session"]["wallet"],
        master.wallet.clone().unwrap().as_str()
    );

    // Unlinked, it is a master of its own again.
    let r = app
        .http
        .delete(format!("{}/v1/identities/email/bob@example.com", app.url))
        .bearer_auth(&master.session_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let request_id = start(&app, "bob@example.com").await;
    consume(&app, &link_token(&smtp.message(3).await, &app.url)).await;
    let body: Value = status(&app, &request_id).await.json().await.unwrap();
    assert_eq!(
        body["session"]["omni_account"],
        OmniAccount::derive("email", "bob@example.com").as_str()
    );
}

#[tokio::test]
async fn email_sign_in_is_limited_checked_and_can_be_off() {
    let smtp = SmtpSink::start();
    let app = TestApp::start_with(|s| {
        s.email = Some(smtp.settings());
        s.email_rate_per_address_per_hour = 2;
    })
    .await;
    start(&app, "carol@example.com").await;
    start(&app, "carol@example.com").await;
    let r = app
        .post_json(
            "/v1/auth/email/start",
            json!({"email": "carol@example.com"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    start(&app, "dave@example.com").await; // another address is unaffected

    for bad in ["", "carol", "a@b", "x y@example.com"] {
        let r = app
            .post_json("/v1/auth/email/start", json!({"email": bad}))
            .await;
        assert_eq!(error_of(r).await.0, StatusCode::BAD_REQUEST, "{bad:?}");
    }
    assert_eq!(
        error_of(consume(&app, "short").await).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        error_of(consume(&app, &"A".repeat(43)).await).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        error_of(status(&app, &"A".repeat(43)).await).await.0,
        StatusCode::NOT_FOUND
    );

    // An expired link does nothing.
    let request_id = start(&app, "erin@example.com").await;
    let token = link_token(&smtp.message(4).await, &app.url);
    app.clock.advance(600);
    assert_eq!(
        error_of(consume(&app, &token).await).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        error_of(status(&app, &request_id).await).await.0,
        StatusCode::NOT_FOUND
    );

    let off = TestApp::start().await;
    let r = off
        .post_json(
            "/v1/auth/email/start",
            json!({"email": "carol@example.com"}),
        )
        .await;
    assert_eq!(error_of(r).await.0, StatusCode::SERVICE_UNAVAILABLE);
}
