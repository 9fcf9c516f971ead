use agentkeys_types::{OmniAccount, WalletAddress};
use agentkeys_wallet::WalletKey;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::app::{TestApp, error_of, sign};

#[tokio::test]
async fn wallet_sign_in_gives_a_session_for_that_wallet() {
    let app = TestApp::start().await;
    let wallet = WalletKey::random();
    let c = app
        .challenge(&wallet.address().to_string().to_lowercase())
        .await;

    // The message names the issuer's host with port, the issuer as URI, the EIP-55 address.
    let host = app.url.trim_start_matches("http://");
    assert!(c.message.starts_with(&format!(
        "{host} wants you to sign in with your Ethereum account:\n"
    )));
    assert!(
        c.message
            .contains(&format!("\n{}\n", wallet.address().to_checksum(None)))
    );
    assert!(c.message.contains(&format!("URI: {}\n", app.url)));
    assert!(c.message.contains("Chain ID: 1\n"));

    let r = app
        .verify(&c.challenge_id, &sign(&wallet, &c.message))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let s: Value = r.json().await.unwrap();
    let lower = wallet.address().to_string().to_lowercase();
    assert_eq!(s["wallet"], lower);
    let expected_omni = OmniAccount::for_wallet(&lower.parse::<WalletAddress>().unwrap());
    assert_eq!(s["omni_account"], expected_omni.as_str());
    let token = s["session_token"].as_str().unwrap();
    assert!(token.starts_with("aks_") && token.len() >= 47);

    let who: Value = app
        .http
        .get(format!("{}/v1/session", app.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(who["omni_account"], expected_omni.as_str());
    assert_eq!(who["wallet"], lower);
    assert_eq!(who["kind"], "master");

    // The token is stored only as a hash.
    let stored = app
        .state
        .store
        .session(&agentkeys_broker::session::token_hash(token))
        .await
        .unwrap()
        .unwrap();
    assert_ne!(stored.token_hash, token);
}

#[tokio::test]
async fn another_signer_is_refused() {
    let app = TestApp::start().await;
    let wallet = WalletKey::random();
    let impostor = WalletKey::random();
    let c = app.challenge(&wallet.address().to_string()).await;
    let (status, kind, message) = error_of(
        app.verify(&c.challenge_id, &sign(&impostor, &c.message))
            .await,
    )
    .await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::UNAUTHORIZED, "sign_in_failed")
    );
    assert!(
        message.contains("not from the challenged address"),
        "{message}"
    );
}

#[tokio::test]
async fn a_challenge_is_single_use() {
    let app = TestApp::start().await;
    let wallet = WalletKey::random();
    let c = app.challenge(&wallet.address().to_string()).await;
    let sig = sign(&wallet, &c.message);
    assert_eq!(
        app.verify(&c.challenge_id, &sig).await.status(),
        StatusCode::OK
    );
    let (status, _, message) = error_of(app.verify(&c.challenge_id, &sig).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(message.contains("already used"), "{message}");

    // A failed attempt burns the challenge too, so it cannot be brute-forced.
    let c = app.challenge(&wallet.address().to_string()).await;
    let other = sign(&WalletKey::random(), &c.message);
    assert_eq!(
        app.verify(&c.challenge_id, &other).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.verify(&c.challenge_id, &sign(&wallet, &c.message))
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn an_expired_challenge_is_refused() {
    let app = TestApp::start().await;
    let wallet = WalletKey::random();
    let c = app.challenge(&wallet.address().to_string()).await;
    app.clock.advance(600);
    let (status, _, message) = error_of(
        app.verify(&c.challenge_id, &sign(&wallet, &c.message))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(message.contains("expired"), "{message}");
}

#[tokio::test]
async fn unknown_challenge_and_malformed_input() {
    let app = TestApp::start().await;
    let wallet = WalletKey::random();
    let c = app.challenge(&wallet.address().to_string()).await;
    let good = sign(&wallet, &c.message);

    let unknown = app.verify("0123456789abcdef0123456789abcdef", &good).await;
    assert_eq!(error_of(unknown).await.0, StatusCode::UNAUTHORIZED);

    for bad_sig in [
        "",
        "0x",
        "0x1234",
        &good[2..],
        &format!("{}zz", &good[..130]),
        &format!("{good}00"),
    ] {
        let (status, kind, _) = error_of(app.verify(&c.challenge_id, bad_sig).await).await;
        assert_eq!(
            (status, kind.as_str()),
            (StatusCode::BAD_REQUEST, "invalid_request"),
            "{bad_sig:?}"
        );
    }
    for bad_id in [
        "",
        "short",
        "../../etc/passwd",
        "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
    ] {
        assert_eq!(
            error_of(app.verify(bad_id, &good).await).await.0,
            StatusCode::BAD_REQUEST,
            "{bad_id:?}"
        );
    }
    // Malformed attempts did not burn the challenge.
    assert_eq!(
        app.verify(&c.challenge_id, &good).await.status(),
        StatusCode::OK
    );

    for bad_address in [
        "",
        "0x12",
        "8ba1f109551bd432803012645ac136ddd64dba72",
        "0xZZa1f109551bd432803012645ac136ddd64dba72",
    ] {
        let r = app
            .post_json("/v1/auth/wallet/challenge", json!({"address": bad_address}))
            .await;
        assert_eq!(
            error_of(r).await.0,
            StatusCode::BAD_REQUEST,
            "{bad_address:?}"
        );
    }
    let r = app
        .post_json(
            "/v1/auth/wallet/challenge",
            json!({"address": wallet.address().to_string(), "chain_id": 0}),
        )
        .await;
    assert_eq!(error_of(r).await.0, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn sessions_end_at_logout_and_expiry() {
    let app = TestApp::start().await;
    let (_, s) = app.sign_in().await;
    let whoami = |token: String| {
        let app = &app;
        async move { app.get_as(&token, "/v1/session").await }
    };
    assert_eq!(
        whoami(s.session_token.clone()).await.status(),
        StatusCode::OK
    );
    let r = app.logout(&s.session_token).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        error_of(whoami(s.session_token.clone()).await).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        error_of(app.mint(&s.session_token, None).await).await.0,
        StatusCode::UNAUTHORIZED
    );

    let (_, s) = app.sign_in().await;
    app.clock.advance(43_200);
    let (status, kind, _) = error_of(whoami(s.session_token.clone()).await).await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::UNAUTHORIZED, "unauthenticated")
    );
}

#[tokio::test]
async fn bearer_header_problems_are_401() {
    let app = TestApp::start().await;
    let (_, s) = app.sign_in().await;
    let cases = [
        None,
        Some("Bearer".to_owned()),
        Some("Bearer ".to_owned()),
        Some(format!("Basic {}", s.session_token)),
        Some(format!("Bearer {}x", s.session_token)),
        Some("Bearer aks_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned()),
    ];
    for header in cases {
        let mut req = app.http.get(format!("{}/v1/session", app.url));
        if let Some(h) = &header {
            req = req.header("authorization", h);
        }
        let (status, kind, message) = error_of(req.send().await.unwrap()).await;
        assert_eq!(
            (status, kind.as_str()),
            (StatusCode::UNAUTHORIZED, "unauthenticated"),
            "{header:?}"
        );
        assert_eq!(
            message,
            "the session is missing, unknown, expired or revoked; sign in again"
        );
    }
    // Non-UTF-8 header bytes.
    let r = app
        .http
        .get(format!("{}/v1/session", app.url))
        .header(
            "authorization",
            reqwest::header::HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.0, StatusCode::UNAUTHORIZED);
}
