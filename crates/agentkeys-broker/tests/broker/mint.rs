use std::collections::BTreeSet;

use agentkeys_types::claims::CLAIMS_SUPPORTED;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::app::{TestApp, error_of, verify_jwt};

#[tokio::test]
async fn a_minted_jwt_verifies_and_carries_exactly_the_spec_claims() {
    let app = TestApp::start().await;
    let (_, s) = app.sign_in().await;
    let wallet = s.wallet.clone().unwrap();
    let now = {
        use agentkeys_broker::clock::Clock;
        app.clock.now()
    };

    let r = app.mint(&s.session_token, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["wallet"], wallet.as_str());
    assert_eq!(body["actor_omni"], s.omni_account.as_str());
    let jwt = body["jwt"].as_str().unwrap();

    let header = jsonwebtoken::decode_header(jwt).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    let jwks = app.jwks().await;
    assert_eq!(
        header.kid.as_deref(),
        jwks["keys"][0]["kid"].as_str(),
        "signed by the first (active) key"
    );

    let c = verify_jwt(&app, jwt, "sts.amazonaws.com").await.unwrap();
    assert_eq!(c["iss"], app.url.as_str());
    assert_eq!(c["sub"], format!("agentkeys:user:{wallet}"));
    assert_eq!(c["aud"], "sts.amazonaws.com");
    assert_eq!(c["iat"], now);
    assert_eq!(c["nbf"], now - 60);
    assert_eq!(c["exp"], now + 300);
    assert_eq!(
        body["expiration"],
        agentkeys_broker::clock::rfc3339(now + 300)
    );
    assert_eq!(c["agentkeys_user_wallet"], wallet.as_str());
    assert_eq!(c["agentkeys_actor_omni"], s.omni_account.as_str());
    assert_eq!(
        c["https://aws.amazon.com/tags"],
        json!({
            "principal_tags": {
                "agentkeys_actor_omni": [s.omni_account],
                "agentkeys_user_wallet": [wallet],
            },
            "transitive_tag_keys": ["agentkeys_user_wallet", "agentkeys_actor_omni"],
        })
    );
    assert!(c.get("https://aws.amazon.com/roles").is_none());
    assert!(c.get("agentkeys_scope").is_none(), "no grant, no scope");
    assert_eq!(
        c["https://aws.amazon.com/source_identity"],
        s.omni_account.as_str(),
        "the actor is the STS session's source identity"
    );

    // jti is unique per mint.
    let second = app.mint_jwt(&s.session_token).await;
    let c2 = verify_jwt(&app, &second, "sts.amazonaws.com")
        .await
        .unwrap();
    assert_ne!(c["jti"], c2["jti"]);
}

#[tokio::test]
async fn claims_supported_is_exactly_what_the_mint_emits() {
    let app = TestApp::start().await;
    let (_, s) = app.sign_in().await;
    let r = app
        .mint(
            &s.session_token,
            Some(json!({"role_arn": "arn:aws:iam::123456789012:role/agentkeys-data"})),
        )
        .await;
    let jwt = r.json::<Value>().await.unwrap()["jwt"]
        .as_str()
        .unwrap()
        .to_owned();
    let claims = verify_jwt(&app, &jwt, "sts.amazonaws.com").await.unwrap();
    assert_eq!(
        claims["https://aws.amazon.com/roles"],
        "arn:aws:iam::123456789012:role/agentkeys-data"
    );

    let emitted: BTreeSet<String> = claims.as_object().unwrap().keys().cloned().collect();
    let discovery: Value = app
        .get("/.well-known/openid-configuration")
        .await
        .json()
        .await
        .unwrap();
    let supported: BTreeSet<String> = discovery["claims_supported"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        supported,
        CLAIMS_SUPPORTED.iter().map(|s| s.to_string()).collect()
    );
    // agentkeys_scope is emitted only for mints under a grant (SPEC §5.2); everything else
    // a master's mint with a role must carry.
    let mut expected = supported.clone();
    expected.remove("agentkeys_scope");
    assert_eq!(emitted, expected);
}

#[tokio::test]
async fn discovery_is_byte_exact_and_keys_are_es256_with_x5c() {
    let app = TestApp::start().await;
    let r = app.get("/.well-known/openid-configuration").await;
    assert_eq!(r.status(), StatusCode::OK);
    let d: Value = r.json().await.unwrap();
    assert_eq!(d["issuer"], app.url.as_str());
    assert_eq!(d["jwks_uri"], format!("{}/.well-known/jwks.json", app.url));
    assert_eq!(d["id_token_signing_alg_values_supported"], json!(["ES256"]));

    let r = app.get("/.well-known/jwks.json").await;
    let cache = r.headers()["cache-control"].to_str().unwrap().to_owned();
    assert_eq!(cache, "public, max-age=300");
    let jwks: Value = r.json().await.unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    let k = &keys[0];
    assert_eq!(
        (&k["kty"], &k["crv"], &k["alg"], &k["use"]),
        (
            &json!("EC"),
            &json!("P-256"),
            &json!("ES256"),
            &json!("sig")
        )
    );
    assert_eq!(k["x5c"].as_array().unwrap().len(), 1);
    // kid is the RFC 7638 thumbprint, recomputed here by hand.
    use base64::Engine;
    use sha2::Digest;
    let canonical = format!(
        r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
        k["x"].as_str().unwrap(),
        k["y"].as_str().unwrap()
    );
    let thumb = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(canonical.as_bytes()));
    assert_eq!(k["kid"], thumb.as_str());
}

#[tokio::test]
async fn audience_and_role_are_checked() {
    let app = TestApp::start().await;
    let (_, s) = app.sign_in().await;

    let r = app
        .mint(&s.session_token, Some(json!({"audience": "gcp-wif"})))
        .await;
    let jwt = r.json::<Value>().await.unwrap()["jwt"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        verify_jwt(&app, &jwt, "gcp-wif").await.unwrap()["aud"],
        "gcp-wif"
    );
    assert!(verify_jwt(&app, &jwt, "sts.amazonaws.com").await.is_err());

    let (status, kind, _) = error_of(
        app.mint(&s.session_token, Some(json!({"audience": "evil"})))
            .await,
    )
    .await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::FORBIDDEN, "audience_not_allowed")
    );

    let r = app
        .mint(
            &s.session_token,
            Some(json!({"role_arn": "arn:aws:iam:::role/agentkeys-data"})),
        )
        .await;
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "the account-less RGW form is accepted"
    );
    for bad in [
        "role",
        "arn:aws:iam::123:role/x",
        "arn:aws:iam::123456789012:user/x",
    ] {
        let (status, _, message) = error_of(
            app.mint(&s.session_token, Some(json!({"role_arn": bad})))
                .await,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(message.contains("role_arn"));
    }
}

#[tokio::test]
async fn a_tampered_token_does_not_verify() {
    let app = TestApp::start().await;
    let (_, s) = app.sign_in().await;
    let jwt = app.mint_jwt(&s.session_token).await;
    let mut parts: Vec<String> = jwt.split('.').map(str::to_owned).collect();
    use base64::Engine;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claims: Value = serde_json::from_slice(&engine.decode(&parts[1]).unwrap()).unwrap();
    claims["agentkeys_user_wallet"] = json!("0xdeadbeef");
    parts[1] = engine.encode(claims.to_string());
    assert!(
        verify_jwt(&app, &parts.join("."), "sts.amazonaws.com")
            .await
            .is_err()
    );
}

#[tokio::test]
async fn the_server_side_aws_mint_is_retired() {
    let app = TestApp::start().await;
    let (_, s) = app.sign_in().await;
    let r = app
        .http
        .post(format!("{}/v1/mint-aws-creds", app.url))
        .bearer_auth(&s.session_token)
        .send()
        .await
        .unwrap();
    let (status, kind, message) = error_of(r).await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::NOT_FOUND, "route_retired")
    );
    assert!(
        message.contains("/v1/mint-oidc-jwt") && message.contains("AssumeRoleWithWebIdentity"),
        "{message}"
    );
}

#[tokio::test]
async fn ops_endpoints_answer() {
    let app = TestApp::start().await;
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
    let ready: Value = app.get("/readyz").await.json().await.unwrap();
    assert_eq!(
        ready,
        json!({"status": "ok", "store": "ok", "signing_key": "ok"})
    );
    let (_, s) = app.sign_in().await;
    app.mint_jwt(&s.session_token).await;
    let metrics = app.get("/metrics").await.text().await.unwrap();
    for name in [
        "agentkeys_mints_total{outcome=\"ok\"}",
        "agentkeys_mint_duration_seconds_bucket",
        "agentkeys_audit_writes_total",
        "agentkeys_sign_ins_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
}
