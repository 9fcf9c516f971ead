//! Sign-in with an external OpenID Connect provider, against a real one (npm oidc-provider,
//! started by `tests/oidc_op/harness.rs`).

use agentkeys_broker::oidc_login::ProviderConfig;
use agentkeys_types::OmniAccount;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::app::{TestApp, error_of};
use crate::oidc_op;

async fn app_with_provider() -> TestApp {
    let op = oidc_op::get();
    TestApp::start_with(|s| {
        s.oidc_providers = vec![ProviderConfig::new(
            "corp".to_owned(),
            op.rich.clone(),
            oidc_op::CLIENT_ID.to_owned(),
            oidc_op::CLIENT_SECRET.to_owned(),
        )];
    })
    .await
}

async fn start(app: &TestApp, path: &str, token: Option<&str>) -> (String, String) {
    let mut req = app
        .http
        .post(format!("{}{path}", app.url))
        .json(&json!({"provider": "corp"}));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let body: Value = req.send().await.unwrap().json().await.unwrap();
    (
        body["request_id"].as_str().unwrap().to_owned(),
        body["authorization_url"].as_str().unwrap().to_owned(),
    )
}

/// The browser's part: sign in at the provider, follow the redirect to the broker.
async fn browser(app: &TestApp, authorization_url: &str, account: &str) -> reqwest::Response {
    let callback = oidc_op::sign_in(authorization_url, account).await.unwrap();
    assert!(
        callback
            .as_str()
            .starts_with(&format!("{}/auth/oidc/callback?", app.url)),
        "{callback}"
    );
    app.http.get(callback).send().await.unwrap()
}

async fn status(app: &TestApp, request_id: &str) -> reqwest::Response {
    app.get(&format!("/v1/auth/oidc/status/{request_id}")).await
}

#[tokio::test]
async fn an_oidc_login_signs_in_once() {
    let app = app_with_provider().await;
    let (request_id, url) = start(&app, "/v1/auth/oidc/start", None).await;
    assert_eq!(
        status(&app, &request_id).await.status(),
        StatusCode::ACCEPTED
    );
    let page = browser(&app, &url, "alice").await;
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("Signed in"));

    let body: Value = status(&app, &request_id).await.json().await.unwrap();
    assert_eq!(body["status"], "approved");
    assert_eq!(
        body["session"]["omni_account"],
        OmniAccount::derive("oauth2_corp", "alice").as_str()
    );
    app.mint_jwt(body["session"]["session_token"].as_str().unwrap())
        .await;
    assert_eq!(
        error_of(status(&app, &request_id).await).await.0,
        StatusCode::CONFLICT
    );
}

#[tokio::test]
async fn bad_state_replayed_code_and_denial_sign_nobody_in() {
    let app = app_with_provider().await;
    let (request_id, url) = start(&app, "/v1/auth/oidc/start", None).await;
    let callback = oidc_op::sign_in(&url, "mallory").await.unwrap();

    // A callback whose state was tampered with is refused and signs nobody in.
    let mut forged = callback.clone();
    let pairs: Vec<(String, String)> = callback
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "state" {
                "A".repeat(43)
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    forged.query_pairs_mut().clear().extend_pairs(pairs);
    assert_eq!(
        app.http.get(forged).send().await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        status(&app, &request_id).await.status(),
        StatusCode::ACCEPTED
    );

    // The real callback works once; replaying it (same code, same state) does not.
    assert_eq!(
        app.http
            .get(callback.clone())
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        app.http.get(callback).send().await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );

    // The user refusing at the provider signs nobody in.
    let (denied_id, url) = start(&app, "/v1/auth/oidc/start", None).await;
    let callback = oidc_op::deny(&url).await.unwrap();
    let r = app.http.get(callback.clone()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "{callback}");
    assert_eq!(
        status(&app, &denied_id).await.status(),
        StatusCode::ACCEPTED
    );

    let r = app
        .post_json("/v1/auth/oidc/start", json!({"provider": "nope"}))
        .await;
    assert_eq!(error_of(r).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_linked_oidc_identity_signs_in_as_its_wallet_master() {
    let app = app_with_provider().await;
    let (_, master) = app.sign_in().await;
    let (link_id, url) = start(&app, "/v1/identities/oidc", Some(&master.session_token)).await;
    assert_eq!(browser(&app, &url, "carol").await.status(), StatusCode::OK);
    let linked: Value = status(&app, &link_id).await.json().await.unwrap();
    assert_eq!(linked["status"], "linked");
    assert_eq!(linked["identity"]["identity_type"], "oauth2_corp");

    let (request_id, url) = start(&app, "/v1/auth/oidc/start", None).await;
    browser(&app, &url, "carol").await;
    let body: Value = status(&app, &request_id).await.json().await.unwrap();
    assert_eq!(
        body["session"]["omni_account"],
        master.omni_account.as_str()
    );
    assert_eq!(body["session"]["wallet"], master.wallet.unwrap().as_str());
}
