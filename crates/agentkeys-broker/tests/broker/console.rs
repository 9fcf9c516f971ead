//! The console's HTTP side: its pages' headers, the browser sign-in into an HttpOnly cookie, the
//! CSRF token a cookie-authenticated change needs, logout, pairing lookup and denial, and the
//! audit chain's status.

use agentkeys_wallet::WalletKey;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_SECURITY_POLICY, SET_COOKIE};
use serde_json::{Value, json};

use crate::agents::Device;
use crate::app::{TestApp, error_of, sign};

/// Signs `wallet` in the way the console does; the `Set-Cookie` value and the body.
async fn browser_sign_in(app: &TestApp, wallet: &WalletKey) -> (String, Value) {
    let c = app.challenge(&wallet.address().to_string()).await;
    let r = app
        .post_json(
            "/v1/auth/wallet/browser",
            json!({"challenge_id": c.challenge_id, "signature": sign(wallet, &c.message)}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let cookie = r.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    (cookie, r.json().await.unwrap())
}

/// `agentkeys_session=…` from a `Set-Cookie` value, as a browser sends it back.
fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_owned()
}

async fn with_cookie(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    cookie: &str,
    csrf: Option<&str>,
    body: Option<Value>,
) -> reqwest::Response {
    let mut req = app
        .http
        .request(method, format!("{}{path}", app.url))
        .header("cookie", cookie);
    if let Some(csrf) = csrf {
        req = req.header("x-csrf-token", csrf);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn console_pages_forbid_inline_script_framing_and_sniffing() {
    let app = TestApp::start().await;
    for (path, kind) in [
        ("/console", "text/html"),
        ("/console/app.js", "text/javascript"),
        ("/console/app.css", "text/css"),
    ] {
        let r = app.get(path).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let h = r.headers().clone();
        assert!(
            h["content-type"].to_str().unwrap().starts_with(kind),
            "{path}"
        );
        let csp = h[CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(
            csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
            "{csp}"
        );
        assert!(!csp.contains("unsafe"), "{csp}");
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["cache-control"], "no-store");
    }
    let html = app.get("/console").await.text().await.unwrap();
    assert_eq!(html.matches("<script").count(), 1);
    assert!(html.contains(r#"<script src="/console/app.js"></script>"#));
    assert!(!html.contains("style=") && !html.contains("<style"));
    // No inline event handler attribute (` onclick=` and the like).
    let handler = html.match_indices(" on").any(|(i, _)| {
        let rest = &html[i + 3..];
        let name_len = rest.bytes().take_while(u8::is_ascii_lowercase).count();
        name_len > 0 && rest[name_len..].starts_with('=')
    });
    assert!(!handler, "inline event handler in the console's HTML");
}

#[tokio::test]
async fn a_browser_sign_in_keeps_the_session_in_an_httponly_cookie_and_changes_need_the_csrf_token()
{
    let app = TestApp::start().await;
    let wallet = WalletKey::random();
    let (set_cookie, body) = browser_sign_in(&app, &wallet).await;
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(set_cookie.contains(attr), "{set_cookie}");
    }
    let cookie = cookie_pair(&set_cookie);
    let token = cookie.strip_prefix("agentkeys_session=").unwrap();
    assert!(token.starts_with("aks_"));
    assert!(
        !body.to_string().contains(token),
        "the session never reaches the page"
    );
    assert_eq!(body["wallet"], wallet.address().to_string().to_lowercase());
    let csrf = body["csrf_token"].as_str().unwrap().to_owned();
    let events = app.audit().await;
    assert_eq!(events.last().unwrap().details["client"], "browser");

    // The console's session read: the same CSRF token; without a cookie, "not signed in" (204).
    let get = reqwest::Method::GET;
    let r = with_cookie(
        &app,
        get.clone(),
        "/v1/console/session",
        &cookie,
        None,
        None,
    )
    .await;
    assert_eq!(
        r.json::<Value>().await.unwrap()["csrf_token"],
        csrf.as_str()
    );
    assert_eq!(
        app.get("/v1/console/session").await.status(),
        StatusCode::NO_CONTENT
    );
    // Reads need only the cookie.
    let r = with_cookie(&app, get.clone(), "/v1/agents", &cookie, None, None).await;
    assert_eq!(r.status(), StatusCode::OK);

    // A change with the cookie alone, or with another token, is refused before anything runs.
    let post = reqwest::Method::POST;
    let approve = json!({"code": "ABCD-EFGH", "label": "bot"});
    for csrf in [None, Some("0".repeat(64).as_str()), Some("")] {
        let r = with_cookie(
            &app,
            post.clone(),
            "/v1/agents/pairing/approve",
            &cookie,
            csrf,
            Some(approve.clone()),
        )
        .await;
        let (status, kind, _) = error_of(r).await;
        assert_eq!(
            (status, kind.as_str()),
            (StatusCode::FORBIDDEN, "csrf_failed")
        );
    }
    assert!(
        !app.audit()
            .await
            .iter()
            .any(|e| e.kind == "agent.approve_attempt"),
        "a refused CSRF check reaches nothing"
    );
    let r = with_cookie(
        &app,
        post.clone(),
        "/v1/agents/pairing/approve",
        &cookie,
        Some(&csrf),
        Some(approve),
    )
    .await;
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "authenticated: the code is unknown"
    );

    // Logout revokes the session and clears the cookie.
    let r = with_cookie(
        &app,
        post.clone(),
        "/v1/session/logout",
        &cookie,
        Some(&csrf),
        None,
    )
    .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let cleared = r.headers()[SET_COOKIE].to_str().unwrap();
    assert!(
        cleared.starts_with("agentkeys_session=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    let r = with_cookie(&app, get.clone(), "/v1/agents", &cookie, None, None).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = with_cookie(&app, get, "/v1/console/session", &cookie, None, None).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    // A bearer is never asked for a CSRF token (no browser sends it by itself).
    let (_, master) = app.sign_in().await;
    let r = app
        .post_json_as(
            &master.session_token,
            "/v1/agents/pairing/approve",
            json!({"code": "ABCD-EFGH", "label": "bot"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_master_looks_up_a_pairing_code_and_denies_it() {
    let app = TestApp::start().await;
    let (_, master) = app.sign_in().await;
    let m = master.session_token.as_str();
    let mut device = Device::new(&app);
    let started = device.start(&app).await;
    let code = started["code"].as_str().unwrap().to_owned();
    let id = started["pairing_id"].as_str().unwrap().to_owned();

    let r = app
        .post_json_as(
            m,
            "/v1/agents/pairing/lookup",
            json!({"code": code.to_lowercase()}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let found: Value = r.json().await.unwrap();
    assert_eq!(found["device_address"], device.address());
    assert_eq!(found["code"], code.as_str());

    let r = app
        .post_json_as(m, "/v1/agents/pairing/deny", json!({"code": code}))
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(device.poll(&app, &id).await.status(), StatusCode::NOT_FOUND);
    for path in ["/v1/agents/pairing/lookup", "/v1/agents/pairing/deny"] {
        let r = app.post_json_as(m, path, json!({"code": code})).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let r = app
        .post_json_as(
            m,
            "/v1/agents/pairing/approve",
            json!({"code": code, "label": "bot"}),
        )
        .await;
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "a denied code pairs nothing"
    );

    let audit = app.audit().await;
    let denied: Vec<_> = audit
        .iter()
        .filter(|e| e.kind == "agent.pairing_denied")
        .collect();
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0].details["device"], device.address());
    // Each lookup and denial counts as an attempt at a code, like an approval.
    let attempts = audit
        .iter()
        .filter(|e| e.kind == "agent.approve_attempt")
        .count();
    assert_eq!(attempts, 5);
}

#[tokio::test]
async fn the_chain_status_names_the_first_bad_event() {
    let app = TestApp::start().await;
    let (_, master) = app.sign_in().await;
    let m = master.session_token.as_str();
    for _ in 0..3 {
        app.mint_jwt(m).await;
    }
    let status = || async {
        let r = app
            .http
            .get(format!("{}/v1/audit/chain", app.url))
            .bearer_auth(m)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.json::<Value>().await.unwrap()
    };
    let ok = status().await;
    let events = app.audit().await;
    assert_eq!(ok["intact"], true);
    assert_eq!(ok["verified_events"], events.len());
    assert_eq!(ok["head_hash"], events.last().unwrap().hash.as_str());

    app.sql("UPDATE audit_events SET outcome = 'denied' WHERE seq = 2")
        .await;
    let bad = status().await;
    assert_eq!(
        (bad["intact"].clone(), bad["broken_at"].clone()),
        (json!(false), json!(2))
    );
    assert_eq!(bad["verified_events"], 1);
}
