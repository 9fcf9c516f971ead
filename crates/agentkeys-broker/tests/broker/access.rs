//! Access requests: an agent asks, its master approves (a wallet master with a signature over
//! the request's terms, an email master with its session) or denies, and the agent's poll gets
//! the grant.

use agentkeys_broker::clock::{Clock, rfc3339};
use agentkeys_wallet::WalletKey;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::agents::pair;
use crate::app::{TestApp, error_of};
use crate::email::{SmtpSink, collect, mailed_code, start, verifier};

async fn ask(app: &TestApp, agent: &str, body: Value) -> reqwest::Response {
    app.post_json_as(agent, "/v1/access-requests", body).await
}

fn inbox(reason: &str) -> Value {
    json!({"scope": "inbox/", "max_uses": 2, "ttl_seconds": 3600, "reason": reason})
}

/// The `approve_access` purpose a wallet signs for `request` (as the master lists it).
fn approval(request: &Value, expires_at: &str) -> Value {
    json!({"approve_access": {
        "request_id": request["request_id"], "agent_label": request["agent_label"],
        "agent": request["agent"], "scope_tag": request["scope_tag"],
        "max_uses": request["max_uses"], "expires_at": expires_at,
    }})
}

async fn approve(app: &TestApp, master: &str, id: &str, body: Value) -> reqwest::Response {
    app.post_json_as(master, &format!("/v1/access-requests/{id}/approve"), body)
        .await
}

#[tokio::test]
async fn a_wallet_master_approves_with_a_signature_over_the_terms_and_the_agent_gets_the_grant() {
    let app = TestApp::start().await;
    let (wallet, master) = app.sign_in().await;
    let m = master.session_token.as_str();
    let (agent, agent_omni) = pair(&app, m, "bot").await;

    let r = ask(&app, &agent, inbox("read today's invoices")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let asked: Value = r.json().await.unwrap();
    assert_eq!(asked["status"], "pending");
    assert_eq!(asked["scope"], "inbox/");
    assert_eq!(
        asked["scope_tag"],
        Value::Null,
        "an agent does not see its master's prefix"
    );
    let id = asked["request_id"].as_str().unwrap().to_owned();

    // The master sees who asks for what, why, and the worst case.
    let list: Value = app
        .get_as(m, "/v1/access-requests?status=pending")
        .await
        .json()
        .await
        .unwrap();
    let request = &list["requests"][0];
    assert_eq!(request["agent"], agent_omni.as_str());
    assert_eq!(request["agent_label"], "bot");
    assert!(
        request["device_address"]
            .as_str()
            .unwrap()
            .starts_with("0x")
    );
    assert_eq!(request["reason"], "read today's invoices");
    assert_eq!(request["max_uses"], 2);
    assert_eq!(request["ttl_seconds"], 3600);
    let wallet_addr = master.wallet.clone().unwrap();
    assert_eq!(request["scope_tag"], format!("{wallet_addr}/inbox"));
    assert_eq!(request["worst_case_exposure"]["seconds"], 300 + 3600);

    // A wallet master's session alone approves nothing.
    let (status, kind, _) = error_of(approve(&app, m, &id, json!({})).await).await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::FORBIDDEN, "step_up_failed")
    );
    let expires_at = rfc3339(app.clock.now() + 3600);
    // Another wallet's signature, or a signature over other terms (5 uses), is refused.
    let thief = WalletKey::random();
    let proof = app
        .wallet_proof(&thief, approval(request, &expires_at))
        .await;
    let body = json!({"wallet_proof": proof, "expires_at": expires_at});
    let (status, kind, _) = error_of(approve(&app, m, &id, body).await).await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::FORBIDDEN, "step_up_failed")
    );
    let mut more = approval(request, &expires_at);
    more["approve_access"]["max_uses"] = json!(5);
    let proof = app.wallet_proof(&wallet, more).await;
    let body = json!({"wallet_proof": proof, "expires_at": expires_at});
    let (status, kind, _) = error_of(approve(&app, m, &id, body).await).await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::FORBIDDEN, "step_up_failed")
    );
    // Longer than asked for: refused before any signature is looked at.
    let too_long = rfc3339(app.clock.now() + 7200);
    let proof = app
        .wallet_proof(&wallet, approval(request, &too_long))
        .await;
    let body = json!({"wallet_proof": proof, "expires_at": too_long});
    assert_eq!(
        approve(&app, m, &id, body).await.status(),
        StatusCode::BAD_REQUEST
    );

    let proof = app
        .wallet_proof(&wallet, approval(request, &expires_at))
        .await;
    let signature = proof["signature"].as_str().unwrap().to_owned();
    let body = json!({"wallet_proof": proof, "expires_at": expires_at});
    let r = approve(&app, m, &id, body.clone()).await;
    assert_eq!(r.status(), StatusCode::OK);
    let approved: Value = r.json().await.unwrap();
    assert_eq!(approved["status"], "approved");
    assert_eq!(approved["grant"]["expires_at"], expires_at.as_str());
    assert_eq!(approved["grant"]["max_uses"], 2);
    assert_eq!(
        error_of(approve(&app, m, &id, body).await).await.0,
        StatusCode::CONFLICT,
        "decided once"
    );

    // The agent's poll receives the grant and uses it at once.
    let polled: Value = app
        .get_as(&agent, &format!("/v1/access-requests/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(polled["status"], "approved");
    let grant = polled["grant"]["grant_id"].as_str().unwrap().to_owned();
    assert_eq!(polled["grant"]["scope_tag"], format!("{wallet_addr}/inbox"));
    for _ in 0..2 {
        let r = app.mint(&agent, Some(json!({"grant_id": grant}))).await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    let (status, kind, _) =
        error_of(app.mint(&agent, Some(json!({"grant_id": grant}))).await).await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::FORBIDDEN, "grant_exhausted")
    );

    // Audited: the request, the refused approvals, and the approval with its signature.
    let audit = app.audit().await;
    let of = |kind: &str, outcome: &str| {
        audit
            .iter()
            .filter(|e| e.kind == kind && e.outcome == outcome)
            .cloned()
            .collect::<Vec<_>>()
    };
    let requested = of("access.requested", "ok");
    assert_eq!(requested.len(), 1);
    assert_eq!(requested[0].actor.as_deref(), Some(agent_omni.as_str()));
    assert_eq!(requested[0].details["reason"], "read today's invoices");
    assert_eq!(of("access.approved", "failed").len(), 2);
    let ok = of("access.approved", "ok");
    assert_eq!(ok.len(), 1);
    assert_eq!(ok[0].details["by"], "wallet");
    assert_eq!(ok[0].details["signature"], signature.as_str());
    assert_eq!(ok[0].details["grant"], grant.as_str());
    let message = ok[0].details["message"].as_str().unwrap();
    assert!(
        message.contains(&format!(
            "Approve access request {id}: agent bot ({agent_omni}) may use {wallet_addr}/inbox/ for 2 mints until {expires_at}."
        )),
        "{message}"
    );
    assert_eq!(of("grant.created", "ok")[0].details["request"], id.as_str());
}

#[tokio::test]
async fn a_denied_or_expired_request_gives_nothing() {
    let app = TestApp::start().await;
    let (wallet, master) = app.sign_in().await;
    let m = master.session_token.as_str();
    let (agent, _) = pair(&app, m, "bot").await;
    let id_of = |v: Value| v["request_id"].as_str().unwrap().to_owned();
    let denied = id_of(ask(&app, &agent, inbox("one")).await.json().await.unwrap());
    let expiring = id_of(ask(&app, &agent, inbox("two")).await.json().await.unwrap());

    let r = app
        .post_json_as(m, &format!("/v1/access-requests/{denied}/deny"), json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let polled: Value = app
        .get_as(&agent, &format!("/v1/access-requests/{denied}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (polled["status"].as_str(), &polled["grant"]),
        (Some("denied"), &Value::Null)
    );
    let expires_at = rfc3339(app.clock.now() + 60);
    let list: Value = app
        .get_as(m, "/v1/access-requests")
        .await
        .json()
        .await
        .unwrap();
    let first = list["requests"][0].clone();
    let proof = app
        .wallet_proof(&wallet, approval(&first, &expires_at))
        .await;
    let body = json!({"wallet_proof": proof, "expires_at": expires_at});
    assert_eq!(
        error_of(approve(&app, m, &denied, body).await).await.0,
        StatusCode::CONFLICT
    );

    // Past the request's own lifetime (15 minutes here) nobody can decide it.
    app.clock.advance(901);
    let polled: Value = app
        .get_as(&agent, &format!("/v1/access-requests/{expiring}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(polled["status"], "expired");
    let r = app
        .post_json_as(
            m,
            &format!("/v1/access-requests/{expiring}/deny"),
            json!({}),
        )
        .await;
    assert_eq!(error_of(r).await.0, StatusCode::CONFLICT);
    let pending: Value = app
        .get_as(m, "/v1/access-requests?status=pending")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(pending["requests"], json!([]));
    assert!(app.audit().await.iter().any(|e| e.kind == "access.denied"));
}

#[tokio::test]
async fn requests_are_limited_checked_and_kept_between_an_agent_and_its_master() {
    let app = TestApp::start_with(|s| {
        s.access_requests.max_pending = 2;
        s.access_requests.reason_max_bytes = 20;
    })
    .await;
    let (_, master) = app.sign_in().await;
    let m = master.session_token.as_str();
    let (agent, _) = pair(&app, m, "bot").await;
    let (_, stranger) = app.sign_in().await;

    for (body, what) in [
        (
            json!({"scope": "../x", "ttl_seconds": 60, "reason": "r"}),
            "scope",
        ),
        (
            json!({"scope": "x/", "ttl_seconds": 0, "reason": "r"}),
            "ttl",
        ),
        (
            json!({"scope": "x/", "ttl_seconds": 60, "max_uses": 0, "reason": "r"}),
            "uses",
        ),
        (
            json!({"scope": "x/", "ttl_seconds": 60, "reason": "  "}),
            "empty reason",
        ),
        (
            json!({"scope": "x/", "ttl_seconds": 60, "reason": "x".repeat(21)}),
            "long reason",
        ),
        (
            json!({"scope": "x/", "ttl_seconds": 60, "reason": "a\nb"}),
            "two lines",
        ),
    ] {
        assert_eq!(
            ask(&app, &agent, body).await.status(),
            StatusCode::BAD_REQUEST,
            "{what}"
        );
    }
    let (status, kind, _) = error_of(ask(&app, m, inbox("r")).await).await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::FORBIDDEN, "agents_only")
    );

    let first: Value = ask(&app, &agent, inbox("r")).await.json().await.unwrap();
    let id = first["request_id"].as_str().unwrap().to_owned();
    assert_eq!(ask(&app, &agent, inbox("r")).await.status(), StatusCode::OK);
    let (status, _, message) = error_of(ask(&app, &agent, inbox("r")).await).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        message.contains("BROKER_ACCESS_REQUEST_MAX_PENDING"),
        "{message}"
    );
    assert!(app.audit().await.iter().any(|e| {
        e.kind == "access.requested"
            && e.outcome == "denied"
            && e.details["reason_denied"] == "too_many_pending"
    }));

    // Nobody else sees or decides it; the agent cannot decide its own.
    let path = format!("/v1/access-requests/{id}");
    assert_eq!(
        app.get_as(&stranger.session_token, &path).await.status(),
        StatusCode::NOT_FOUND
    );
    let r = app
        .post_json_as(&stranger.session_token, &format!("{path}/deny"), json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let (status, kind, _) = error_of(
        app.post_json_as(&agent, &format!("{path}/deny"), json!({}))
            .await,
    )
    .await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::FORBIDDEN, "masters_only")
    );
    let list: Value = app
        .get_as(&stranger.session_token, "/v1/access-requests")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["requests"], json!([]));

    // A suspended agent cannot ask.
    let agent_omni = first["agent"].as_str().unwrap();
    let r = app
        .post_json_as(m, &format!("/v1/agents/{agent_omni}/suspend"), json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let (status, kind, _) = error_of(ask(&app, &agent, inbox("r")).await).await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::FORBIDDEN, "agent_suspended")
    );
}

#[tokio::test]
async fn an_email_master_approves_with_its_session() {
    let smtp = SmtpSink::start();
    let app = TestApp::start_with(|s| s.email = Some(smtp.settings())).await;
    let (v, c) = verifier();
    let request_id = start(&app, "carol@example.com", &c).await;
    let code = mailed_code(&smtp.message(1).await);
    let signed_in: Value = collect(&app, &request_id, &code, &v)
        .await
        .json()
        .await
        .unwrap();
    let m = signed_in["session"]["session_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let master_omni = signed_in["session"]["omni_account"]
        .as_str()
        .unwrap()
        .to_owned();
    let (agent, _) = pair(&app, &m, "bot").await;
    let asked: Value = ask(&app, &agent, inbox("r")).await.json().await.unwrap();
    let id = asked["request_id"].as_str().unwrap();

    // There is no wallet to sign with: a proof is a mistake.
    let body = json!({"wallet_proof": {"challenge_id": "0".repeat(32), "signature": format!("0x{}", "1".repeat(130))}});
    assert_eq!(
        approve(&app, &m, id, body).await.status(),
        StatusCode::BAD_REQUEST
    );
    let before = app.clock.now();
    let r = approve(&app, &m, id, json!({})).await;
    assert_eq!(r.status(), StatusCode::OK);
    let approved: Value = r.json().await.unwrap();
    assert_eq!(
        approved["grant"]["scope_tag"],
        format!("{master_omni}/inbox")
    );
    assert_eq!(approved["grant"]["expires_at"], rfc3339(before + 3600));
    let ok = app
        .audit()
        .await
        .into_iter()
        .find(|e| e.kind == "access.approved")
        .unwrap();
    assert_eq!(ok.details["by"], "session");
    let grant = approved["grant"]["grant_id"].as_str().unwrap();
    assert_eq!(
        app.mint(&agent, Some(json!({"grant_id": grant})))
            .await
            .status(),
        StatusCode::OK
    );
}
