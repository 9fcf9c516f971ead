//! Email magic-link sign-in and identity linking, against a real SMTP server (Python's
//! aiosmtpd, installed into a venv under the cargo target dir on first use).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use agentkeys_broker::clock::Clock;
use agentkeys_broker::config::EmailDelivery;
use agentkeys_broker::mailer::SmtpSettings;
use agentkeys_types::OmniAccount;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::app::{TestApp, error_of};

/// A real SMTP server writing every message into a maildir.
pub(crate) struct SmtpSink {
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
    /// Starts aiosmtpd on a free port. The port is picked by binding and releasing it, so
    /// another test may take it first: a sink whose process exits (its bind failed) is started
    /// again on another port, rather than this test talking to someone else's sink.
    pub(crate) fn start() -> Self {
        let python = venv_python();
        for _ in 0..5 {
            let maildir = tempfile::tempdir().unwrap();
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut child = Command::new(&python)
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
            let mut exited = false;
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                if child.try_wait().unwrap().is_some() {
                    exited = true;
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "aiosmtpd did not start"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            // Something answers on the port; still ours only if our process lives on.
            std::thread::sleep(Duration::from_millis(100));
            if exited || child.try_wait().unwrap().is_some() {
                continue;
            }
            return Self {
                child,
                port,
                maildir,
            };
        }
        panic!("aiosmtpd could not get a port in five tries")
    }

    pub(crate) fn settings(&self) -> EmailDelivery {
        EmailDelivery::Smtp(SmtpSettings {
            host: "127.0.0.1".into(),
            port: self.port,
            tls: agentkeys_broker::config::SmtpTls::None,
            username: None,
            password: None,
            from: "AgentKeys <no-reply@agentkeys.test>".into(),
        })
    }

    /// Waits for the `n`th message (1-based) and returns it raw.
    pub(crate) async fn message(&self, n: usize) -> String {
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

/// The one-time code in a message (`… code: ABCD-EFGH`).
pub(crate) fn mailed_code(message: &str) -> String {
    let message = decoded(message);
    let at = message
        .find("code: ")
        .unwrap_or_else(|| panic!("no code in {message}"))
        + "code: ".len();
    message[at..at + 9].to_owned()
}

/// A requester's verifier (random) and its S256 challenge.
pub fn verifier() -> (String, String) {
    let v = agentkeys_broker::session::secret();
    let c = agentkeys_types::login::code_challenge(&v);
    (v, c)
}

pub(crate) async fn start(app: &TestApp, email: &str, challenge: &str) -> String {
    let r = app
        .post_json(
            "/v1/auth/email/start",
            json!({"email": email, "code_challenge": challenge}),
        )
        .await;
    let status = r.status();
    assert_eq!(status, StatusCode::OK, "{:?}", r.text().await);
    r.json::<Value>().await.unwrap()["request_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

pub(crate) async fn collect(
    app: &TestApp,
    request_id: &str,
    code: &str,
    verifier: &str,
) -> reqwest::Response {
    app.post_json(
        "/v1/auth/email/collect",
        json!({"request_id": request_id, "code": code, "code_verifier": verifier}),
    )
    .await
}

/// What a browser that opened the link and clicked its button sends.
async fn click(app: &TestApp, token: &str) -> reqwest::Response {
    app.post_json("/v1/auth/email/browser", json!({"token": token}))
        .await
}

#[tokio::test]
async fn the_requester_collects_with_the_mailed_code_and_its_verifier() {
    let smtp = SmtpSink::start();
    let app = TestApp::start_with(|s| s.email = Some(smtp.settings())).await;
    let (v, c) = verifier();
    let request_id = start(&app, "  Alice@Example.COM ", &c).await;

    let mail = smtp.message(1).await;
    assert!(mail.contains("To: alice@example.com"), "{mail}");
    assert!(
        mail.contains("Subject: Your AgentKeys sign-in code"),
        "{mail}"
    );
    let code = mailed_code(&mail);

    // The request id alone: no route hands anything out for it any more.
    assert_eq!(
        error_of(
            app.get(&format!("/v1/auth/email/status/{request_id}"))
                .await
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    // Another client's verifier: refused, and it costs no attempt.
    let (other_v, _) = verifier();
    let (status, kind, _) = error_of(collect(&app, &request_id, &code, &other_v).await).await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::FORBIDDEN, "verifier_mismatch")
    );
    // A wrong code: refused with the tries left.
    let (status, kind, message) = error_of(collect(&app, &request_id, "ZZZZ-ZZZZ", &v).await).await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "wrong_code")
    );
    assert!(message.contains("4 tries left"), "{message}");

    let r = collect(&app, &request_id, &code.to_lowercase(), &v).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "approved");
    let expected = OmniAccount::derive("email", "alice@example.com");
    assert_eq!(body["session"]["omni_account"], expected.as_str());
    assert_eq!(body["session"]["wallet"], Value::Null);
    let token = body["session"]["session_token"].as_str().unwrap();
    app.mint_jwt(token).await;
    assert_eq!(
        error_of(collect(&app, &request_id, &code, &v).await)
            .await
            .0,
        StatusCode::CONFLICT,
        "collected once"
    );
    // The link of a collected request signs in nothing either.
    assert_eq!(
        error_of(click(&app, &link_token(&mail, &app.url)).await)
            .await
            .0,
        StatusCode::NOT_FOUND
    );

    // Secrets never reach the audit log.
    let audit = serde_json::to_string(&app.audit().await).unwrap();
    assert!(!audit.contains(&request_id) && !audit.contains(token) && !audit.contains(&v));
    assert!(!audit.contains(&code) && !audit.contains(&code.replace('-', "")));
    let kinds: Vec<String> = app.audit().await.into_iter().map(|e| e.kind).collect();
    for k in ["sign_in.email.requested", "sign_in.email"] {
        assert!(kinds.iter().any(|x| x == k), "{k}: {kinds:?}");
    }
}

/// The attack: someone starts a sign-in for the victim's address and keeps the request. The
/// victim's mail is genuine; a mail scanner fetches the page, the victim opens it and clicks
/// everything. The attacker's collection still gets no session, and guessing codes kills the
/// request.
#[tokio::test]
async fn a_sign_in_started_by_someone_else_releases_nothing_to_them() {
    let smtp = SmtpSink::start();
    let app = TestApp::start_with(|s| s.email = Some(smtp.settings())).await;
    let (attacker_v, attacker_c) = verifier();
    let request_id = start(&app, "victim@example.com", &attacker_c).await;
    let mail = smtp.message(1).await;
    let token = link_token(&mail, &app.url);

    // A scanner loads the page and its script: nothing is consumed on load.
    let page = app.get("/auth/email/landing").await;
    assert_eq!(page.headers()["referrer-policy"], "no-referrer");
    assert!(page.text().await.unwrap().contains("Sign in this browser"));
    let script = app
        .get("/auth/email/landing.js")
        .await
        .text()
        .await
        .unwrap();
    assert!(script.contains("addEventListener(\"click\""), "{script}");
    // Nothing was consumed: the attacker's wrong guess is still counted against a live request.
    let (status, kind, _) =
        error_of(collect(&app, &request_id, "ZZZZ-ZZZZ", &attacker_v).await).await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "wrong_code")
    );

    // The victim clicks: the victim's own browser is signed in (a cookie), nobody else.
    let r = click(&app, &token).await;
    assert_eq!(r.status(), StatusCode::OK);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    for attr in [
        "agentkeys_session=aks_",
        "HttpOnly",
        "SameSite=Strict",
        "Path=/",
    ] {
        assert!(cookie.contains(attr), "{attr}: {cookie}");
    }
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["omni_account"],
        OmniAccount::derive("email", "victim@example.com").as_str()
    );
    assert!(body.get("session_token").is_none());
    // The cookie is a real session of the victim's.
    let browser_token = cookie
        .trim_start_matches("agentkeys_session=")
        .split(';')
        .next()
        .unwrap();
    let who = app
        .http
        .get(format!("{}/v1/session", app.url))
        .bearer_auth(browser_token)
        .send()
        .await
        .unwrap();
    assert_eq!(who.status(), StatusCode::OK);
    // Clicking again does nothing more.
    assert_eq!(
        error_of(click(&app, &token).await).await.0,
        StatusCode::NOT_FOUND
    );

    // The attacker holds the request id and the verifier, and gets nothing.
    let (status, _, _) = error_of(collect(&app, &request_id, "ABCD-EFGH", &attacker_v).await).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let sessions_of_victim = app
        .state
        .store
        .sessions_of(
            &OmniAccount::derive("email", "victim@example.com"),
            app.clock.now(),
        )
        .await
        .unwrap();
    assert_eq!(sessions_of_victim.len(), 1, "only the victim's browser");
}

#[tokio::test]
async fn guessing_the_code_kills_the_request() {
    let smtp = SmtpSink::start();
    let app = TestApp::start_with(|s| s.email = Some(smtp.settings())).await;
    let (v, c) = verifier();
    let request_id = start(&app, "guess@example.com", &c).await;
    let code = mailed_code(&smtp.message(1).await);
    let wrong = if code == "ZZZZ-ZZZZ" {
        "YYYY-YYYY"
    } else {
        "ZZZZ-ZZZZ"
    };
    for left in (0..5).rev() {
        let (status, kind, message) = error_of(collect(&app, &request_id, wrong, &v).await).await;
        assert_eq!(
            (status, kind.as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, "wrong_code")
        );
        if left == 0 {
            assert!(message.contains("no more tries"), "{message}");
        }
    }
    assert_eq!(
        error_of(collect(&app, &request_id, &code, &v).await)
            .await
            .0,
        StatusCode::NOT_FOUND,
        "dead after five wrong codes, even with the right one"
    );
}

#[tokio::test]
async fn linking_needs_a_fresh_wallet_signature_and_the_code_from_the_mailbox() {
    let smtp = SmtpSink::start();
    let app = TestApp::start_with(|s| s.email = Some(smtp.settings())).await;
    let (wallet, master) = app.sign_in().await;
    let (thief_wallet, _) = app.sign_in().await;
    let (v, c) = verifier();
    let link = |proof: Value, email: &str| {
        let body = json!({"email": email, "code_challenge": c, "wallet_proof": proof});
        app.post_json_as(&master.session_token, "/v1/identities/email", body)
    };
    let purpose = json!({"link_email": "bob@example.com"});

    // Whoever holds only the bearer cannot link: no proof, a sign-in signature, another
    // wallet's signature, or a signature for another address are all refused.
    let r = app
        .post_json_as(
            &master.session_token,
            "/v1/identities/email",
            json!({"email": "bob@example.com", "code_challenge": c}),
        )
        .await;
    assert_eq!(error_of(r).await.0, StatusCode::UNPROCESSABLE_ENTITY);
    let sign_in = app.challenge(&wallet.address().to_string()).await;
    let sign_in_proof = json!({"challenge_id": sign_in.challenge_id, "signature": crate::app::sign(&wallet, &sign_in.message)});
    let refusals = [
        sign_in_proof,
        app.wallet_proof(&thief_wallet, purpose.clone()).await,
        app.wallet_proof(&wallet, json!({"link_email": "other@example.com"}))
            .await,
    ];
    for proof in refusals {
        let (status, kind, _) = error_of(link(proof, "bob@example.com").await).await;
        assert_eq!(
            (status, kind.as_str()),
            (StatusCode::FORBIDDEN, "step_up_failed")
        );
    }
    let step_up_failures = app
        .audit()
        .await
        .into_iter()
        .filter(|e| e.kind == "identity.step_up" && e.outcome == "failed")
        .count();
    assert_eq!(step_up_failures, 3);

    // With the wallet's fresh signature the mail goes out; it names the asking account and
    // carries a code only, no link a click could complete.
    let proof = app.wallet_proof(&wallet, purpose.clone()).await;
    let r = link(proof.clone(), "bob@example.com").await;
    assert_eq!(r.status(), StatusCode::OK);
    let link_request = r.json::<Value>().await.unwrap()["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // A proof is single use.
    assert_eq!(
        error_of(link(proof, "bob@example.com").await).await.0,
        StatusCode::FORBIDDEN
    );
    let mail = decoded(&smtp.message(1).await);
    let wallet_text = master.wallet.clone().unwrap();
    assert!(mail.contains(&wallet_text), "{mail}");
    assert!(!mail.contains("/auth/email/landing"), "{mail}");
    let code = mailed_code(&mail);
    let r = collect(&app, &link_request, &code, &v).await;
    let linked: Value = r.json().await.unwrap();
    assert_eq!(linked["status"], "linked");
    assert_eq!(linked["identity"]["identity_value"], "bob@example.com");

    // Signing in by the linked address yields the wallet master's session.
    let (v2, c2) = verifier();
    let request_id = start(&app, "bob@example.com", &c2).await;
    let mail = smtp.message(2).await;
    let body: Value = collect(&app, &request_id, &mailed_code(&mail), &v2)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        body["session"]["omni_account"],
        master.omni_account.as_str()
    );
    assert_eq!(body["session"]["wallet"], wallet_text.as_str());
    let via_email = body["session"]["session_token"]
        .as_str()
        .unwrap()
        .to_owned();
    app.mint_jwt(&via_email).await;

    // Unlinked: the sessions obtained through it are revoked, the wallet's own are not.
    let r = app
        .http
        .delete(format!("{}/v1/identities/email/bob@example.com", app.url))
        .bearer_auth(&master.session_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["sessions_revoked"], 1);
    assert_eq!(
        app.mint(&via_email, None).await.status(),
        StatusCode::UNAUTHORIZED
    );
    app.mint_jwt(&master.session_token).await;
    let unlinked = app
        .audit()
        .await
        .into_iter()
        .find(|e| e.kind == "identity.unlinked")
        .unwrap();
    assert_eq!(unlinked.details["sessions_revoked"], 1);

    // And the address is a master of its own again.
    let (v3, c3) = verifier();
    let request_id = start(&app, "bob@example.com", &c3).await;
    let body: Value = collect(&app, &request_id, &mailed_code(&smtp.message(3).await), &v3)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        body["session"]["omni_account"],
        OmniAccount::derive("email", "bob@example.com").as_str()
    );
}

/// The variant of the takeover: a master asks to link the victim's address. The victim gets
/// the mail and does whatever it offers; without the code typed into the asker's CLI nothing
/// is linked, and the victim's sign-ins stay the victim's.
#[tokio::test]
async fn a_link_request_for_someone_elses_address_links_nothing() {
    let smtp = SmtpSink::start();
    let app = TestApp::start_with(|s| s.email = Some(smtp.settings())).await;
    let (wallet, attacker) = app.sign_in().await;
    let (v, c) = verifier();
    let proof = app
        .wallet_proof(&wallet, json!({"link_email": "victim@example.com"}))
        .await;
    let r = app
        .post_json_as(
            &attacker.session_token,
            "/v1/identities/email",
            json!({"email": "victim@example.com", "code_challenge": c, "wallet_proof": proof}),
        )
        .await;
    let link_request = r.json::<Value>().await.unwrap()["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mail = decoded(&smtp.message(1).await);
    assert!(mail.contains("If that is not you, ignore this"), "{mail}");
    // Guessing the code is bounded and then dead.
    for _ in 0..5 {
        collect(&app, &link_request, "ZZZZ-ZZZZ", &v).await;
    }
    assert_eq!(
        error_of(collect(&app, &link_request, &mailed_code(&mail), &v).await)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    let (v2, c2) = verifier();
    let request_id = start(&app, "victim@example.com", &c2).await;
    let body: Value = collect(&app, &request_id, &mailed_code(&smtp.message(2).await), &v2)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        body["session"]["omni_account"],
        OmniAccount::derive("email", "victim@example.com").as_str()
    );
}

#[tokio::test]
async fn email_sign_in_is_limited_checked_and_can_be_off() {
    let smtp = SmtpSink::start();
    let app = TestApp::start_with(|s| {
        s.email = Some(smtp.settings());
        s.email_limits.per_address.limit = 2;
    })
    .await;
    let (v, c) = verifier();
    start(&app, "carol@example.com", &c).await;
    start(&app, "carol@example.com", &c).await;
    let r = app
        .post_json(
            "/v1/auth/email/start",
            json!({"email": "carol@example.com", "code_challenge": c}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    start(&app, "dave@example.com", &c).await; // another address is unaffected

    for bad in ["", "carol", "a@b", "x y@example.com"] {
        let r = app
            .post_json(
                "/v1/auth/email/start",
                json!({"email": bad, "code_challenge": c}),
            )
            .await;
        assert_eq!(error_of(r).await.0, StatusCode::BAD_REQUEST, "{bad:?}");
    }
    for bad in [
        "",
        "plain",
        &"A".repeat(44),
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-c=",
    ] {
        let r = app
            .post_json(
                "/v1/auth/email/start",
                json!({"email": "erin@example.com", "code_challenge": bad}),
            )
            .await;
        assert_eq!(error_of(r).await.0, StatusCode::BAD_REQUEST, "{bad:?}");
    }
    assert_eq!(
        error_of(click(&app, "short").await).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        error_of(click(&app, &"A".repeat(43)).await).await.0,
        StatusCode::NOT_FOUND
    );
    for (id, code, verifier, want) in [
        (
            "A".repeat(43),
            "ABCD-EFGH",
            v.clone(),
            StatusCode::NOT_FOUND,
        ),
        ("A".repeat(43), "ABCD", v.clone(), StatusCode::BAD_REQUEST),
        (
            "A".repeat(43),
            "ABCD-EFGH",
            "short".to_owned(),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        assert_eq!(
            error_of(collect(&app, &id, code, &verifier).await).await.0,
            want
        );
    }

    // An expired request does nothing.
    let request_id = start(&app, "erin@example.com", &c).await;
    let mail = smtp.message(4).await;
    app.clock.advance(600);
    assert_eq!(
        error_of(click(&app, &link_token(&mail, &app.url)).await)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        error_of(collect(&app, &request_id, &mailed_code(&mail), &v).await)
            .await
            .0,
        StatusCode::NOT_FOUND
    );

    let off = TestApp::start().await;
    let r = off
        .post_json(
            "/v1/auth/email/start",
            json!({"email": "carol@example.com", "code_challenge": c}),
        )
        .await;
    assert_eq!(error_of(r).await.0, StatusCode::SERVICE_UNAVAILABLE);
}
