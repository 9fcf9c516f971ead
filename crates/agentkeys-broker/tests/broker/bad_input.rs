//! Bad input of any kind gets the SPEC §4 envelope and a 4xx: never a 500, a panic or a
//! partial write.

use proptest::prelude::*;
use reqwest::StatusCode;
use serde_json::json;

use crate::app::{TestApp, error_of};

const JSON_ROUTES: &[&str] = &[
    "/v1/auth/wallet/challenge",
    "/v1/auth/wallet/verify",
    "/v1/mint-oidc-jwt",
    "/v1/agents/pairing",
    "/v1/agents/pairing/approve",
    "/v1/agents/pairing/poll",
];

async fn post_raw(
    app: &TestApp,
    path: &str,
    token: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> reqwest::Response {
    let mut req = app
        .http
        .post(format!("{}{path}", app.url))
        .bearer_auth(token)
        .body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn malformed_bodies_get_the_envelope_and_a_4xx() {
    let app = TestApp::start().await;
    let (_, s) = app.sign_in().await;
    let events_before = app.audit().await.len();
    let cases: Vec<(&str, Option<&str>, Vec<u8>, StatusCode)> = vec![
        (
            "not json",
            Some("application/json"),
            b"{".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "unterminated string",
            Some("application/json"),
            b"\"abc".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "array",
            Some("application/json"),
            b"[]".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "wrong types",
            Some("application/json"),
            br#"{"address":1,"challenge_id":2,"signature":3,"audience":4}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "unknown field",
            Some("application/json"),
            br#"{"bogus":true}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "text body",
            Some("text/plain"),
            b"hello".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "no content type",
            None,
            b"{}".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "invalid utf-8",
            Some("application/json"),
            vec![b'"', 0xff, 0xfe, b'"'],
            StatusCode::BAD_REQUEST,
        ),
        (
            "oversized",
            Some("application/json"),
            vec![b' '; 70_000],
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ];
    for path in JSON_ROUTES {
        for (name, ct, body, expected) in &cases {
            // The mint body is optional: an empty or whitespace body means defaults, and a
            // body of spaces is therefore not an error below the size limit.
            let r = post_raw(&app, path, &s.session_token, *ct, body.clone()).await;
            assert!(!r.status().is_success(), "{path} {name} was accepted");
            let (status, kind, message) = error_of(r).await;
            assert_eq!(status, *expected, "{path} {name}: {kind} {message}");
        }
    }
    // Refused mints are audited as denials; nothing else was written (no session, no challenge).
    let events = app.audit().await;
    assert!(
        events[events_before..]
            .iter()
            .all(|e| e.kind == "mint" && e.outcome == "denied")
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_get_the_envelope() {
    let app = TestApp::start().await;
    let (status, kind, _) = error_of(app.get("/v2/nothing").await).await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let (status, kind, _) = error_of(app.get("/v1/mint-oidc-jwt").await).await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
    let r = app
        .http
        .delete(format!("{}/.well-known/jwks.json", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.0, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn huge_and_odd_values_are_4xx() {
    let app = TestApp::start().await;
    let (_, s) = app.sign_in().await;
    let long = "a".repeat(60_000);
    let bodies = [
        ("/v1/auth/wallet/challenge", json!({"address": long})),
        (
            "/v1/auth/wallet/challenge",
            json!({"address": "0x8ba1f109551bd432803012645ac136ddd64dba72", "chain_id": -1}),
        ),
        (
            "/v1/auth/wallet/challenge",
            json!({"address": "0x8ba1f109551bd432803012645ac136ddd64dba72", "chain_id": 1e40}),
        ),
        (
            "/v1/auth/wallet/verify",
            json!({"challenge_id": long, "signature": "0x"}),
        ),
        (
            "/v1/auth/wallet/verify",
            json!({"challenge_id": "\u{0000}", "signature": "\u{202e}"}),
        ),
        ("/v1/mint-oidc-jwt", json!({"audience": long})),
        (
            "/v1/mint-oidc-jwt",
            json!({"role_arn": "arn:aws:iam::123456789012:role/\u{0000}"}),
        ),
        (
            "/v1/mint-oidc-jwt",
            json!({"audience": null, "role_arn": null}),
        ),
    ];
    for (path, body) in bodies {
        let r = app
            .http
            .post(format!("{}{path}", app.url))
            .bearer_auth(&s.session_token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        if status.is_success() {
            assert_eq!(
                body,
                json!({"audience": null, "role_arn": null}),
                "only explicit nulls are fine"
            );
            continue;
        }
        let (status, _, _) = error_of(r).await;
        assert!(status.is_client_error(), "{path} {body}: {status}");
    }
}

/// What the API fuzzer (tests/reliability/fuzz.py) found, kept fixed.
#[tokio::test]
async fn api_fuzzer_findings_stay_fixed() {
    let app = TestApp::start().await;
    let (_, s) = app.sign_in().await;
    // The documented optional mint body may be JSON null: the defaults, like no body.
    let r = post_raw(
        &app,
        "/v1/mint-oidc-jwt",
        &s.session_token,
        Some("application/json"),
        b"null".to_vec(),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let minted: serde_json::Value = r.json().await.unwrap();
    assert_eq!(minted["jwt"].as_str().unwrap().split('.').count(), 3);
    // chain_id is documented as int64 (EIP-2294): one past it is refused, not signed into a
    // message.
    let r = app
        .http
        .post(format!("{}/v1/auth/wallet/challenge", app.url))
        .json(
            &json!({"address": "0x8ba1f109551bd432803012645ac136ddd64dba72",
                      "chain_id": 9_223_372_036_854_775_808_u64}),
        )
        .send()
        .await
        .unwrap();
    let (status, kind, _) = error_of(r).await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    // Audit seqs are int64 too.
    let r = app
        .http
        .get(format!("{}/v1/audit?after=9223372036854775808", app.url))
        .bearer_auth(&s.session_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // The contract names the answers every body and every bearer route can give.
    let spec: serde_json::Value = app.get("/openapi.json").await.json().await.unwrap();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let documented = |status: &str| op["responses"].get(status).is_some();
            if op.get("requestBody").is_some() {
                for status in ["400", "413", "415", "422"] {
                    assert!(documented(status), "{method} {path} lacks {status}");
                }
            }
            let bearer_only = op["security"]
                .as_array()
                .is_some_and(|a| a.iter().all(|alt| alt.get("bearer").is_some()));
            if bearer_only {
                assert!(documented("401"), "{method} {path} lacks 401");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    /// Arbitrary bytes to every JSON route: always a 4xx (or a 200 for the mint's optional
    /// body when the bytes happen to be valid), never a 5xx.
    #[test]
    fn arbitrary_bytes_never_cause_a_5xx(route in 0..JSON_ROUTES.len(), body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let app = shared_app().await;
            let r = post_raw(app, JSON_ROUTES[route], "aks_x", Some("application/json"), body).await;
            let status = r.status();
            prop_assert!(status.is_client_error(), "{}: {status}", JSON_ROUTES[route]);
            Ok(())
        })?;
    }
}

/// One broker for all proptest cases; started on a dedicated runtime thread.
async fn shared_app() -> &'static TestApp {
    static APP: std::sync::OnceLock<&'static TestApp> = std::sync::OnceLock::new();
    if let Some(app) = APP.get() {
        return app;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let app: &'static TestApp = Box::leak(Box::new(TestApp::start().await));
            let _ = tx.send(app);
            std::future::pending::<()>().await;
        });
    });
    let app = rx.recv().unwrap();
    APP.get_or_init(|| app)
}
