//! Grants: a scope of the master's prefix, enforced through the `agentkeys_scope` tag.

use agentkeys_broker::clock::{Clock, rfc3339};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::agents::pair;
use crate::app::{TestApp, error_of, verify_jwt};

async fn create(app: &TestApp, master: &str, body: Value) -> reqwest::Response {
    app.http
        .post(format!("{}/v1/grants", app.url))
        .bearer_auth(master)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn mint_with(app: &TestApp, token: &str, grant: &str) -> reqwest::Response {
    app.mint(token, Some(json!({"grant_id": grant}))).await
}

#[tokio::test]
async fn a_grant_adds_the_scope_tag_and_is_used_up() {
    let app = TestApp::start().await;
    let (_, master) = app.sign_in().await;
    let wallet = master.wallet.clone().unwrap();
    let (agent, agent_omni) = pair(&app, &master.session_token, "bot").await;
    let expires = rfc3339(app.clock.now() + 3600);
    let r = create(
        &app,
        &master.session_token,
        json!({"agent": agent_omni, "scope": "inbox/", "expires_at": expires, "max_uses": 2}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let g: Value = r.json().await.unwrap();
    assert_eq!(g["scope"], "inbox/");
    assert_eq!(g["scope_tag"], format!("{wallet}/inbox"));
    assert_eq!(g["worst_case_exposure"]["seconds"], 300 + 3600);
    let id = g["grant_id"].as_str().unwrap().to_owned();

    // The agent sees its own grant.
    let list: Value = app
        .http
        .get(format!("{}/v1/grants", app.url))
        .bearer_auth(&agent)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["grants"][0]["grant_id"], id.as_str());

    let r = mint_with(&app, &agent, &id).await;
    assert_eq!(r.status(), StatusCode::OK);
    let jwt = r.json::<Value>().await.unwrap()["jwt"]
        .as_str()
        .unwrap()
        .to_owned();
    let c = verify_jwt(&app, &jwt, "sts.amazonaws.com").await.unwrap();
    assert_eq!(c["agentkeys_scope"], format!("{wallet}/inbox"));
    assert_eq!(
        c["https://aws.amazon.com/tags"]["principal_tags"]["agentkeys_scope"],
        json!([format!("{wallet}/inbox")])
    );
    assert_eq!(
        c["agentkeys_user_wallet"],
        agent_omni.as_str(),
        "still never the master's wallet as the wallet tag"
    );
    // Without the grant, no scope.
    let plain = verify_jwt(&app, &app.mint_jwt(&agent).await, "sts.amazonaws.com")
        .await
        .unwrap();
    assert!(plain.get("agentkeys_scope").is_none());

    assert_eq!(mint_with(&app, &agent, &id).await.status(), StatusCode::OK);
    let (status, kind, _) = error_of(mint_with(&app, &agent, &id).await).await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::FORBIDDEN, "grant_exhausted")
    );
    let used: Value = app
        .http
        .get(format!("{}/v1/grants", app.url))
        .bearer_auth(&master.session_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(used["grants"][0]["uses"], 2);

    let audit = app.audit().await;
    let uses = audit
        .iter()
        .filter(|e| e.kind == "mint" && e.details["grant"] == id.as_str())
        .count();
    assert_eq!(uses, 2, "each use is audited with its grant");
    let refused = audit
        .iter()
        .filter(|e| e.outcome == "denied" && e.details["reason"] == "grant_exhausted")
        .count();
    assert_eq!(refused, 1);
}

#[tokio::test]
async fn revoked_expired_and_foreign_grants_are_refused() {
    let app = TestApp::start().await;
    let (_, master) = app.sign_in().await;
    let (agent, agent_omni) = pair(&app, &master.session_token, "bot").await;
    let (other_agent, _) = pair(&app, &master.session_token, "bot2").await;
    let expires = rfc3339(app.clock.now() + 600);
    let g: Value = create(
        &app,
        &master.session_token,
        json!({"agent": agent_omni, "scope": "inbox", "expires_at": expires}),
    )
    .await
    .json()
    .await
    .unwrap();
    let id = g["grant_id"].as_str().unwrap().to_owned();

    for (token, kind) in [
        (&master.session_token, "grant_not_yours"),
        (&other_agent, "grant_not_yours"),
    ] {
        let (status, k, _) = error_of(mint_with(&app, token, &id).await).await;
        assert_eq!((status, k.as_str()), (StatusCode::FORBIDDEN, kind));
    }
    let (_, k, _) =
        error_of(mint_with(&app, &agent, "0123456789abcdef0123456789abcdef").await).await;
    assert_eq!(k, "grant_unknown");

    app.clock.advance(600);
    let (_, k, _) = error_of(mint_with(&app, &agent, &id).await).await;
    assert_eq!(k, "grant_expired");

    let expires = rfc3339(app.clock.now() + 600);
    let g: Value = create(
        &app,
        &master.session_token,
        json!({"agent": agent_omni, "scope": "docs/", "expires_at": expires}),
    )
    .await
    .json()
    .await
    .unwrap();
    let id = g["grant_id"].as_str().unwrap().to_owned();
    assert_eq!(mint_with(&app, &agent, &id).await.status(), StatusCode::OK);
    let r = app
        .http
        .delete(format!("{}/v1/grants/{id}", app.url))
        .bearer_auth(&master.session_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (_, k, _) = error_of(mint_with(&app, &agent, &id).await).await;
    assert_eq!(k, "grant_revoked", "revocation refuses the next mint");
    let r = app
        .http
        .delete(format!("{}/v1/grants/{id}", app.url))
        .bearer_auth(&master.session_token)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn grant_requests_are_checked() {
    let app = TestApp::start().await;
    let (_, master) = app.sign_in().await;
    let (_, agent_omni) = pair(&app, &master.session_token, "bot").await;
    let (_, stranger) = app.sign_in().await;
    let soon = rfc3339(app.clock.now() + 600);
    let cases = [
        (
            json!({"agent": agent_omni, "scope": "../up", "expires_at": soon}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"agent": agent_omni, "scope": "inbox", "expires_at": rfc3339(app.clock.now() - 1)}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"agent": agent_omni, "scope": "inbox", "expires_at": rfc3339(app.clock.now() + 400 * 86_400)}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"agent": agent_omni, "scope": "inbox", "expires_at": "tomorrow"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"agent": agent_omni, "scope": "inbox", "expires_at": soon, "max_uses": 0}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"agent": "0".repeat(64), "scope": "inbox", "expires_at": soon}),
            StatusCode::NOT_FOUND,
        ),
    ];
    for (body, expected) in cases {
        assert_eq!(
            error_of(create(&app, &master.session_token, body.clone()).await)
                .await
                .0,
            expected,
            "{body}"
        );
    }
    // Another master cannot grant to someone else's agent.
    let body = json!({"agent": agent_omni, "scope": "inbox", "expires_at": soon});
    assert_eq!(
        error_of(create(&app, &stranger.session_token, body).await)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
}
