//! Sign-in with an external OpenID Connect provider, against a real one (npm oidc-provider,
//! started by `tests/oidc_op/harness.rs`).

use agentkeys_broker::clock::Clock;
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

/// A started request as its requester holds it.
struct Started {
    request_id: String,
    url: String,
    verifier: String,
}

async fn start_with(app: &TestApp, redirect_uri: Option<&str>) -> Started {
    let (verifier, challenge) = crate::email::verifier();
    let mut body = json!({"provider": "corp", "code_challenge": challenge});
    if let Some(uri) = redirect_uri {
        body["redirect_uri"] = uri.into();
    }
    let r = app.post_json("/v1/auth/oidc/start", body).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    Started {
        request_id: body["request_id"].as_str().unwrap().to_owned(),
        url: body["authorization_url"].as_str().unwrap().to_owned(),
        verifier,
    }
}

/// The browser's part: sign in at the provider, follow the redirect to the broker, and return
/// the broker's answer (not following it further).
async fn browser(app: &TestApp, authorization_url: &str, account: &str) -> reqwest::Response {
    let callback = oidc_op::sign_in(authorization_url, account).await.unwrap();
    assert!(
        callback
            .as_str()
            .starts_with(&format!("{}/auth/oidc/callback?", app.url)),
        "{callback}"
    );
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(callback)
        .send()
        .await
        .unwrap()
}

/// The code the broker hands over: from the loopback redirect's Location, or the paste page.
async fn handed_code(r: reqwest::Response) -> String {
    if r.status() == StatusCode::SEE_OTHER {
        let location = r.headers()["location"].to_str().unwrap().to_owned();
        return location.rsplit("code=").next().unwrap().to_owned();
    }
    assert_eq!(r.status(), StatusCode::OK);
    let page = r.text().await.unwrap();
    let at = page.find("id=\"code\">").unwrap() + "id=\"code\">".len();
    page[at..at + 9].to_owned()
}

async fn collect(app: &TestApp, s: &Started, code: &str) -> reqwest::Response {
    app.post_json(
        "/v1/auth/oidc/collect",
        json!({"request_id": s.request_id, "code": code, "code_verifier": s.verifier}),
    )
    .await
}

#[tokio::test]
async fn the_provider_redirects_the_code_to_the_requesting_clis_loopback() {
    let app = app_with_provider().await;
    let s = start_with(&app, Some("http://127.0.0.1:45678/callback")).await;
    // Nothing to collect before the provider.
    let (status, kind, _) = error_of(collect(&app, &s, "ABCD-EFGH").await).await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "wrong_code")
    );
    let r = browser(&app, &s.url, "alice").await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        location.starts_with("http://127.0.0.1:45678/callback?code="),
        "{location}"
    );
    let code = handed_code(r).await;
    let body: Value = collect(&app, &s, &code).await.json().await.unwrap();
    assert_eq!(body["status"], "approved");
    assert_eq!(
        body["session"]["omni_account"],
        OmniAccount::derive("oauth2_corp", "alice").as_str()
    );
    app.mint_jwt(body["session"]["session_token"].as_str().unwrap())
        .await;
    assert_eq!(
        error_of(collect(&app, &s, &code).await).await.0,
        StatusCode::CONFLICT
    );
    // The old poll route is gone: a request id in a URL releases nothing.
    assert_eq!(
        error_of(
            app.get(&format!("/v1/auth/oidc/status/{}", s.request_id))
                .await
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
}

/// The attack: someone starts a sign-in and sends the victim the real authorization URL. The
/// victim signs in at the provider; the broker sends the victim's browser (and the code) to
/// the victim's own loopback, never to the attacker, whose collection gets nothing.
#[tokio::test]
async fn a_victim_finishing_someone_elses_oidc_request_hands_them_nothing() {
    let app = app_with_provider().await;
    let attacker = start_with(&app, Some("http://127.0.0.1:45679/callback")).await;
    let r = browser(&app, &attacker.url, "victim").await;
    // The code went to 127.0.0.1 of the victim's machine.
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    for guess in [
        "ABCD-EFGH",
        "ZZZZ-ZZZZ",
        "2345-6789",
        "QQQQ-QQQQ",
        "WWWW-WWWW",
    ] {
        let (status, _, _) = error_of(collect(&app, &attacker, guess).await).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    }
    // Even the right code is useless now (and to anyone without the verifier).
    let code = handed_code(r).await;
    assert_eq!(
        error_of(collect(&app, &attacker, &code).await).await.0,
        StatusCode::NOT_FOUND
    );
    let victim = OmniAccount::derive("oauth2_corp", "victim");
    assert!(
        app.state
            .store
            .sessions_of(&victim, app.clock.now())
            .await
            .unwrap()
            .is_empty()
    );

    // Only loopback redirects are accepted: the code can't be sent to the attacker's host.
    for bad in [
        "https://attacker.example/callback",
        "http://attacker.example:80/callback",
        "http://127.0.0.1.attacker.example:80/x",
        "http://127.0.0.1:80@attacker.example/x",
        "http://127.0.0.1:45679/callback?x=",
    ] {
        let (_, c) = crate::email::verifier();
        let r = app
            .post_json(
                "/v1/auth/oidc/start",
                json!({"provider": "corp", "code_challenge": c, "redirect_uri": bad}),
            )
            .await;
        assert_eq!(error_of(r).await.0, StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test]
async fn without_a_loopback_the_code_is_shown_to_paste() {
    let app = app_with_provider().await;
    let s = start_with(&app, None).await;
    let r = browser(&app, &s.url, "paula").await;
    assert_eq!(r.headers()["cache-control"], "no-store");
    let code = handed_code(r).await;
    // Another client's verifier cannot use the pasted code.
    let (other, _) = crate::email::verifier();
    let r = app
        .post_json(
            "/v1/auth/oidc/collect",
            json!({"request_id": s.request_id, "code": code, "code_verifier": other}),
        )
        .await;
    assert_eq!(error_of(r).await.0, StatusCode::FORBIDDEN);
    let body: Value = collect(&app, &s, &code).await.json().await.unwrap();
    assert_eq!(body["status"], "approved");
}

#[tokio::test]
async fn bad_state_replayed_code_and_denial_sign_nobody_in() {
    let app = app_with_provider().await;
    let s = start_with(&app, None).await;
    let callback = oidc_op::sign_in(&s.url, "mallory").await.unwrap();

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

    // The real callback works once; replaying it (same code, same state) does not.
    let first = app.http.get(callback.clone()).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(
        app.http.get(callback).send().await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );

    // The user refusing at the provider signs nobody in, and ends the request: replaying the
    // error (with a long, hostile text) writes no further audit events.
    let denied = start_with(&app, None).await;
    let callback = oidc_op::deny(&denied.url).await.unwrap();
    let r = app.http.get(callback.clone()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "{callback}");
    let events = app.audit().await.len();
    let mut hostile = callback.clone();
    let state = callback
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    hostile
        .query_pairs_mut()
        .clear()
        .append_pair("state", &state)
        .append_pair("error", &format!("x\n{}", "<b>".repeat(5000)));
    for _ in 0..3 {
        let r = app.http.get(hostile.clone()).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    }
    assert_eq!(app.audit().await.len(), events);
    let failure = app
        .audit()
        .await
        .into_iter()
        .rfind(|e| e.kind == "sign_in.oidc.verified")
        .unwrap();
    assert_eq!(failure.outcome, "failed");
    assert_eq!(failure.details["reason"], "provider said access_denied");
    let (status, _, _) = error_of(collect(&app, &denied, "ABCD-EFGH").await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (_, c) = crate::email::verifier();
    let r = app
        .post_json(
            "/v1/auth/oidc/start",
            json!({"provider": "nope", "code_challenge": c}),
        )
        .await;
    assert_eq!(error_of(r).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_linked_oidc_identity_signs_in_as_its_wallet_master() {
    let app = app_with_provider().await;
    let (wallet, master) = app.sign_in().await;
    let (verifier, challenge) = crate::email::verifier();
    // A bearer alone cannot link.
    let r = app
        .post_json_as(
            &master.session_token,
            "/v1/identities/oidc",
            json!({"provider": "corp", "code_challenge": challenge}),
        )
        .await;
    assert_eq!(error_of(r).await.0, StatusCode::UNPROCESSABLE_ENTITY);
    let proof = app
        .wallet_proof(&wallet, json!({"link_oidc": "corp"}))
        .await;
    let body: Value = app
        .post_json_as(
            &master.session_token,
            "/v1/identities/oidc",
            json!({"provider": "corp", "code_challenge": challenge, "wallet_proof": proof}),
        )
        .await
        .json()
        .await
        .unwrap();
    let link = Started {
        request_id: body["request_id"].as_str().unwrap().to_owned(),
        url: body["authorization_url"].as_str().unwrap().to_owned(),
        verifier,
    };
    let code = handed_code(browser(&app, &link.url, "carol").await).await;
    let linked: Value = collect(&app, &link, &code).await.json().await.unwrap();
    assert_eq!(linked["status"], "linked");
    assert_eq!(linked["identity"]["identity_type"], "oauth2_corp");

    let s = start_with(&app, None).await;
    let code = handed_code(browser(&app, &s.url, "carol").await).await;
    let body: Value = collect(&app, &s, &code).await.json().await.unwrap();
    assert_eq!(
        body["session"]["omni_account"],
        master.omni_account.as_str()
    );
    assert_eq!(body["session"]["wallet"], master.wallet.unwrap().as_str());
}
