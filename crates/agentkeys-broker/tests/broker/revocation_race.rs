//! A mint that read its session just before a logout must not commit after it (gates 1 and 2
//! are re-checked inside the mint's audit transaction).

use agentkeys_broker::mint::{DenyReason, MintError};
use agentkeys_broker::session::token_hash;
use agentkeys_types::api::MintRequest;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::app::{TestApp, error_of};

#[tokio::test]
async fn a_mint_that_read_its_session_before_a_logout_is_refused_and_audited() {
    let app = TestApp::start().await;
    let (_, signed_in) = app.sign_in().await;
    let hash = token_hash(&signed_in.session_token);
    // What the mint's extractor read: a live session.
    let read = app.state.store.session(&hash).await.unwrap().unwrap();
    assert!(read.revoked_at.is_none());

    // The logout commits before the mint reaches its gate.
    let r = app.logout(&signed_in.session_token).await;
    assert!(r.status().is_success(), "{}", r.status());

    let minted = agentkeys_broker::mint::mint(&app.state, &read, &MintRequest::default()).await;
    assert!(
        matches!(minted, Err(MintError::Denied(DenyReason::Unauthenticated))),
        "no JWT after the logout committed"
    );
    let last = app.audit().await.pop().unwrap();
    assert_eq!(
        (last.kind.as_str(), last.outcome.as_str()),
        ("mint", "denied")
    );
    assert_eq!(last.details["reason"], "unauthenticated");
    assert_eq!(
        app.mint(&signed_in.session_token, None).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

/// The mint keeps the sessions it has seen live in memory, for their unchanging facts only.
/// After a logout, the very next mint is refused as unauthenticated whatever else is wrong
/// with it (gates 1 and 2 come before the audience and the body), and recorded once; from then
/// on the bearer is refused at the door like any unknown token, adding nothing to the chain.
#[tokio::test]
async fn a_logged_out_bearer_is_refused_at_its_next_mint_and_recorded_once() {
    let app = TestApp::start().await;
    let bodies: [Option<Value>; 3] = [
        None,
        Some(json!({"audience": "https://not-allowed.example"})),
        Some(json!({"audience": 7})),
    ];
    for first in bodies.clone() {
        let (_, s) = app.sign_in().await;
        assert_eq!(
            app.mint(&s.session_token, None).await.status(),
            StatusCode::OK
        );
        let r = app.logout(&s.session_token).await;
        assert!(r.status().is_success(), "{}", r.status());
        let recorded = app.audit().await.len();

        for body in std::iter::once(first.clone()).chain(bodies.clone()) {
            let (status, kind, _) = error_of(app.mint(&s.session_token, body).await).await;
            assert_eq!(
                (status, kind.as_str()),
                (StatusCode::UNAUTHORIZED, "unauthenticated"),
                "first body {first:?}"
            );
        }
        let mints: Vec<_> = app.audit().await[recorded..]
            .iter()
            .filter(|e| e.kind == "mint")
            .cloned()
            .collect();
        assert_eq!(mints.len(), 1, "one recorded refusal, first body {first:?}");
        assert_eq!(
            (mints[0].outcome.as_str(), &mints[0].details["reason"]),
            ("denied", &json!("unauthenticated"))
        );
        assert_eq!(
            mints[0].details["session"],
            json!(&token_hash(&s.session_token)[..16])
        );
    }
}
