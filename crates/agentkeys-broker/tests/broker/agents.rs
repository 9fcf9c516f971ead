//! Agent pairing, lifecycle and agent tokens.

use agentkeys_broker::clock::Clock;
use agentkeys_types::OmniAccount;
use agentkeys_types::pairing::{ProofAction, proof_message};
use agentkeys_wallet::WalletKey;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::app::{TestApp, error_of, sign, verify_jwt};

pub(crate) struct Device {
    key: WalletKey,
    /// Milliseconds; bumped for every proof so each is later than the last.
    clock_ms: i64,
}

impl Device {
    pub(crate) fn new(app: &TestApp) -> Self {
        Self {
            key: WalletKey::random(),
            clock_ms: app.clock.now() * 1000,
        }
    }

    pub(crate) fn address(&self) -> String {
        self.key.address().to_string().to_lowercase()
    }

    fn proof(
        &mut self,
        app: &TestApp,
        action: ProofAction,
        pairing: Option<&str>,
    ) -> (i64, String) {
        self.clock_ms += 1;
        let msg = proof_message(&app.url, action, &self.address(), pairing, self.clock_ms);
        (self.clock_ms, sign(&self.key, &msg))
    }

    pub(crate) async fn start(&mut self, app: &TestApp) -> Value {
        let (ts, sig) = self.proof(app, ProofAction::Pair, None);
        let r = app
            .post_json(
                "/v1/agents/pairing",
                json!({"device_address": self.address(), "timestamp_ms": ts, "signature": sig}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.unwrap()
    }

    pub(crate) async fn poll(&mut self, app: &TestApp, pairing_id: &str) -> reqwest::Response {
        let (ts, sig) = self.proof(app, ProofAction::Poll, Some(pairing_id));
        app.post_json(
            "/v1/agents/pairing/poll",
            json!({"pairing_id": pairing_id, "timestamp_ms": ts, "signature": sig}),
        )
        .await
    }
}

async fn approve(app: &TestApp, master_token: &str, code: &str, label: &str) -> reqwest::Response {
    app.http
        .post(format!("{}/v1/agents/pairing/approve", app.url))
        .bearer_auth(master_token)
        .json(&json!({"code": code, "label": label}))
        .send()
        .await
        .unwrap()
}

/// Pairs a new agent under `master_token`; returns (agent session token, agent omni).
pub(crate) async fn pair(app: &TestApp, master_token: &str, label: &str) -> (String, String) {
    let mut device = Device::new(app);
    let started = device.start(app).await;
    let id = started["pairing_id"].as_str().unwrap().to_owned();
    assert_eq!(device.poll(app, &id).await.status(), StatusCode::ACCEPTED);
    let code = started["code"].as_str().unwrap();
    let r = approve(app, master_token, code, label).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = device.poll(app, &id).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    (
        body["session"]["session_token"]
            .as_str()
            .unwrap()
            .to_owned(),
        body["agent"]["agent_omni"].as_str().unwrap().to_owned(),
    )
}

async fn bearer(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    token: &str,
) -> reqwest::Response {
    app.http
        .request(method, format!("{}{path}", app.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn pairing_gives_the_device_an_agent_session_once() {
    let app = TestApp::start().await;
    let (_, master) = app.sign_in().await;
    let mut device = Device::new(&app);
    let started = device.start(&app).await;
    let code = started["code"].as_str().unwrap().to_owned();
    assert_eq!(code.len(), 9, "shown as XXXX-XXXX: {code}");
    let id = started["pairing_id"].as_str().unwrap().to_owned();

    let pending: Value = device.poll(&app, &id).await.json().await.unwrap();
    assert_eq!(pending["status"], "pending");

    let r = approve(&app, &master.session_token, &code.to_lowercase(), "scraper").await;
    assert_eq!(r.status(), StatusCode::OK);
    let agent: Value = r.json().await.unwrap();
    let master_omni: OmniAccount = master.omni_account.parse().unwrap();
    let expected = OmniAccount::for_agent(&master_omni, "scraper");
    assert_eq!(agent["agent_omni"], expected.as_str());
    assert_eq!(agent["device_address"], device.address());
    assert_eq!(agent["status"], "active");

    let r = device.poll(&app, &id).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "approved");
    let token = body["session"]["session_token"].as_str().unwrap();
    let who: Value = bearer(&app, reqwest::Method::GET, "/v1/session", token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (who["kind"].as_str(), who["omni_account"].as_str()),
        (Some("agent"), Some(expected.as_str()))
    );
    assert_eq!(who["wallet"], Value::Null);

    // Delivered once; a replayed proof is refused.
    let (status, kind, _) = error_of(device.poll(&app, &id).await).await;
    assert_eq!((status, kind.as_str()), (StatusCode::CONFLICT, "conflict"));
    let (ts, sig) = (
        device.clock_ms,
        sign(
            &device.key,
            &proof_message(
                &app.url,
                ProofAction::Poll,
                &device.address(),
                Some(&id),
                device.clock_ms,
            ),
        ),
    );
    let replay = app
        .post_json(
            "/v1/agents/pairing/poll",
            json!({"pairing_id": id, "timestamp_ms": ts, "signature": sig}),
        )
        .await;
    assert_eq!(error_of(replay).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn device_proofs_are_checked() {
    let app = TestApp::start().await;
    let mut device = Device::new(&app);
    let (ts, _) = device.proof(&app, ProofAction::Pair, None);
    let other = WalletKey::random();
    let cases = [
        (
            sign(
                &other,
                &proof_message(&app.url, ProofAction::Pair, &device.address(), None, ts),
            ),
            ts,
            StatusCode::UNAUTHORIZED,
        ),
        (
            sign(
                &device.key,
                &proof_message(&app.url, ProofAction::Poll, &device.address(), None, ts),
            ),
            ts,
            StatusCode::UNAUTHORIZED,
        ),
        (
            sign(
                &device.key,
                &proof_message(
                    "https://other",
                    ProofAction::Pair,
                    &device.address(),
                    None,
                    ts,
                ),
            ),
            ts,
            StatusCode::UNAUTHORIZED,
        ),
        (
            sign(
                &device.key,
                &proof_message(
                    &app.url,
                    ProofAction::Pair,
                    &device.address(),
                    None,
                    ts - 600_000,
                ),
            ),
            ts - 600_000,
            StatusCode::UNAUTHORIZED,
        ),
        ("0x1234".to_owned(), ts, StatusCode::BAD_REQUEST),
    ];
    for (sig, ts, expected) in cases {
        let r = app
            .post_json(
                "/v1/agents/pairing",
                json!({"device_address": device.address(), "timestamp_ms": ts, "signature": sig}),
            )
            .await;
        assert_eq!(error_of(r).await.0, expected);
    }
}

#[tokio::test]
async fn codes_and_labels_are_checked() {
    let app = TestApp::start().await;
    let (_, master) = app.sign_in().await;
    let mut device = Device::new(&app);
    let code = device.start(&app).await["code"]
        .as_str()
        .unwrap()
        .to_owned();

    assert_eq!(
        error_of(approve(&app, &master.session_token, "ABCD-EFGH", "bot").await)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        error_of(approve(&app, &master.session_token, "short", "bot").await)
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        error_of(approve(&app, &master.session_token, &code, "Bad Label").await)
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        approve(&app, &master.session_token, &code, "bot")
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        error_of(approve(&app, &master.session_token, &code, "bot2").await)
            .await
            .0,
        StatusCode::NOT_FOUND,
        "used"
    );

    let mut second = Device::new(&app);
    let code2 = second.start(&app).await["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _, message) =
        error_of(approve(&app, &master.session_token, &code2, "bot").await).await;
    assert_eq!(status, StatusCode::CONFLICT, "{message}");

    // Codes expire.
    app.clock.advance(600);
    assert_eq!(
        error_of(approve(&app, &master.session_token, &code2, "bot3").await)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn approval_attempts_are_limited() {
    let app = TestApp::start().await;
    let (_, master) = app.sign_in().await;
    for _ in 0..20 {
        assert_eq!(
            approve(&app, &master.session_token, "ZZZZ-ZZZZ", "bot")
                .await
                .status(),
            StatusCode::NOT_FOUND
        );
    }
    let r = approve(&app, &master.session_token, "ZZZZ-ZZZZ", "bot").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().get("retry-after").is_some());
    let attempts = app
        .audit()
        .await
        .iter()
        .filter(|e| e.kind == "agent.approve_attempt")
        .count();
    assert_eq!(
        attempts, 21,
        "every attempt is audited, the refused one too"
    );
}

#[tokio::test]
async fn agent_tokens_name_only_the_agent() {
    let app = TestApp::start().await;
    let (_, master) = app.sign_in().await;
    let (agent_token, agent_omni) = pair(&app, &master.session_token, "bot").await;
    let jwt = app.mint_jwt(&agent_token).await;
    let c = verify_jwt(&app, &jwt, "sts.amazonaws.com").await.unwrap();
    assert_eq!(c["sub"], format!("agentkeys:agent:{agent_omni}"));
    assert_eq!(c["agentkeys_user_wallet"], agent_omni.as_str());
    assert_eq!(c["agentkeys_actor_omni"], agent_omni.as_str());
    let text = c.to_string();
    let wallet = master.wallet.unwrap();
    assert!(
        !text.contains(&wallet),
        "an agent token never carries its master's wallet"
    );
    assert!(
        !text.contains(&master.omni_account),
        "nor its master's omni"
    );
    let tags = &c["https://aws.amazon.com/tags"]["principal_tags"];
    assert_eq!(tags["agentkeys_user_wallet"], json!([agent_omni]));

    let mint = app
        .audit()
        .await
        .into_iter()
        .rfind(|e| e.kind == "mint")
        .unwrap();
    assert_eq!(mint.actor.as_deref(), Some(agent_omni.as_str()));
    assert_eq!(
        mint.master.as_deref(),
        Some(master.omni_account.as_str()),
        "audited under its master"
    );
}

#[tokio::test]
async fn suspension_resumption_and_removal() {
    let app = TestApp::start().await;
    let (_, master) = app.sign_in().await;
    let (agent_token, agent_omni) = pair(&app, &master.session_token, "bot").await;
    let m = &master.session_token;

    let list: Value = bearer(&app, reqwest::Method::GET, "/v1/agents", m)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["agents"][0]["label"], "bot");

    // Agents cannot manage agents.
    let r = bearer(&app, reqwest::Method::GET, "/v1/agents", &agent_token).await;
    assert_eq!(error_of(r).await.1, "masters_only");

    let r = bearer(
        &app,
        reqwest::Method::POST,
        &format!("/v1/agents/{agent_omni}/suspend"),
        m,
    )
    .await;
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "suspended");
    let (status, kind, _) = error_of(app.mint(&agent_token, None).await).await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::FORBIDDEN, "agent_suspended")
    );

    let r = bearer(
        &app,
        reqwest::Method::POST,
        &format!("/v1/agents/{agent_omni}/resume"),
        m,
    )
    .await;
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "active");
    app.mint_jwt(&agent_token).await;

    // Another master cannot touch it.
    let (_, other) = app.sign_in().await;
    let r = bearer(
        &app,
        reqwest::Method::POST,
        &format!("/v1/agents/{agent_omni}/suspend"),
        &other.session_token,
    )
    .await;
    assert_eq!(error_of(r).await.0, StatusCode::NOT_FOUND);

    let r = bearer(
        &app,
        reqwest::Method::DELETE,
        &format!("/v1/agents/{agent_omni}"),
        m,
    )
    .await;
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "removed");
    assert_eq!(
        error_of(app.mint(&agent_token, None).await).await.0,
        StatusCode::UNAUTHORIZED,
        "sessions revoked"
    );
    let r = bearer(
        &app,
        reqwest::Method::POST,
        &format!("/v1/agents/{agent_omni}/resume"),
        m,
    )
    .await;
    assert_eq!(
        error_of(r).await.0,
        StatusCode::NOT_FOUND,
        "removal is final"
    );

    let kinds: Vec<String> = app
        .audit()
        .await
        .into_iter()
        .map(|e| e.kind)
        .filter(|k| k.starts_with("agent."))
        .collect();
    for k in [
        "agent.pairing_requested",
        "agent.paired",
        "agent.session_issued",
        "agent.suspended",
        "agent.resumed",
        "agent.removed",
    ] {
        assert!(kinds.iter().any(|x| x == k), "{k} not audited: {kinds:?}");
    }
}

#[tokio::test]
async fn sessions_can_be_listed_revoked_and_all_logged_out() {
    let app = TestApp::start().await;
    let (wallet, first) = app.sign_in().await;
    let second = app.sign_in_as(&wallet).await;
    let third = app.sign_in_as(&wallet).await;

    let list: Value = bearer(
        &app,
        reqwest::Method::GET,
        "/v1/sessions",
        &first.session_token,
    )
    .await
    .json()
    .await
    .unwrap();
    let sessions = list["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 3);
    assert_eq!(sessions.iter().filter(|s| s["current"] == true).count(), 1);
    let listed = serde_json::to_string(&list).unwrap();
    assert!(
        !listed.contains(&second.session_token),
        "ids are not tokens"
    );

    let second_id = agentkeys_broker::session::session_ref(&agentkeys_broker::session::token_hash(
        &second.session_token,
    ))
    .to_owned();
    let r = bearer(
        &app,
        reqwest::Method::POST,
        &format!("/v1/sessions/{second_id}/revoke"),
        &first.session_token,
    )
    .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        bearer(
            &app,
            reqwest::Method::GET,
            "/v1/session",
            &second.session_token
        )
        .await
        .status(),
        StatusCode::UNAUTHORIZED
    );
    let r = bearer(
        &app,
        reqwest::Method::POST,
        "/v1/sessions/0000000000000000/revoke",
        &first.session_token,
    )
    .await;
    assert_eq!(error_of(r).await.0, StatusCode::NOT_FOUND);

    let r = bearer(
        &app,
        reqwest::Method::POST,
        "/v1/session/logout-all",
        &third.session_token,
    )
    .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    for t in [&first.session_token, &third.session_token] {
        assert_eq!(
            bearer(&app, reqwest::Method::GET, "/v1/session", t)
                .await
                .status(),
            StatusCode::UNAUTHORIZED
        );
    }
}

#[tokio::test]
async fn a_paired_device_renews_its_session_with_a_proof() {
    let app = TestApp::start().await;
    let (wallet, master) = app.sign_in().await;
    let mut device = Device::new(&app);
    let started = device.start(&app).await;
    let id = started["pairing_id"].as_str().unwrap().to_owned();
    approve(
        &app,
        &master.session_token,
        started["code"].as_str().unwrap(),
        "bot",
    )
    .await;
    let body: Value = device.poll(&app, &id).await.json().await.unwrap();
    let omni = body["agent"]["agent_omni"].as_str().unwrap().to_owned();

    // The session expires; the agent keeps its identity by proving its device key.
    app.clock.advance(43_200);
    let old = body["session"]["session_token"].as_str().unwrap();
    assert_eq!(
        error_of(app.mint(old, None).await).await.0,
        StatusCode::UNAUTHORIZED
    );
    device.clock_ms = app.clock.now() * 1000;
    let renew = |ts: i64, sig: String| {
        app.post_json(
            "/v1/agents/session",
            json!({"agent_omni": omni, "timestamp_ms": ts, "signature": sig}),
        )
    };
    let (ts, sig) = device.proof(&app, ProofAction::Session, Some(&omni));
    let r = renew(ts, sig.clone()).await;
    assert_eq!(r.status(), StatusCode::OK);
    let s: Value = r.json().await.unwrap();
    assert_eq!(s["omni_account"], omni.as_str());
    let jwt = app.mint_jwt(s["session_token"].as_str().unwrap()).await;
    assert_eq!(
        verify_jwt(&app, &jwt, "sts.amazonaws.com").await.unwrap()["agentkeys_actor_omni"],
        omni.as_str()
    );

    // A replayed proof, another key, or a proof for another purpose is refused.
    assert_eq!(
        error_of(renew(ts, sig).await).await.0,
        StatusCode::UNAUTHORIZED
    );
    let other = WalletKey::random();
    let ts2 = ts + 1;
    let forged = sign(
        &other,
        &proof_message(
            &app.url,
            ProofAction::Session,
            &device.address(),
            Some(&omni),
            ts2,
        ),
    );
    assert_eq!(
        error_of(renew(ts2, forged).await).await.0,
        StatusCode::UNAUTHORIZED
    );
    let wrong_action = sign(
        &device.key,
        &proof_message(
            &app.url,
            ProofAction::Poll,
            &device.address(),
            Some(&omni),
            ts2,
        ),
    );
    assert_eq!(
        error_of(renew(ts2, wrong_action).await).await.0,
        StatusCode::UNAUTHORIZED
    );

    // A suspended agent gets no new session. (The master's own session expired too.)
    let master = app.sign_in_as(&wallet).await;
    let r = bearer(
        &app,
        reqwest::Method::POST,
        &format!("/v1/agents/{omni}/suspend"),
        &master.session_token,
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let (ts, sig) = device.proof(&app, ProofAction::Session, Some(&omni));
    let (status, kind, _) = error_of(renew(ts, sig).await).await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::FORBIDDEN, "agent_suspended")
    );
}
