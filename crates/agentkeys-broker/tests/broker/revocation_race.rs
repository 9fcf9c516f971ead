//! A mint that read its session just before a logout must not commit after it (gates 1 and 2
//! are re-checked inside the mint's audit transaction).

use agentkeys_broker::mint::{DenyReason, MintError};
use agentkeys_broker::session::token_hash;
use agentkeys_types::api::MintRequest;
use reqwest::StatusCode;

use crate::app::TestApp;

#[tokio::test]
async fn a_mint_that_read_its_session_before_a_logout_is_refused_and_audited() {
    let app = TestApp::start().await;
    let (_, signed_in) = app.sign_in().await;
    let hash = token_hash(&signed_in.session_token);
    // What the mint's extractor read: a live session.
    let read = app.state.store.session(&hash).await.unwrap().unwrap();
    assert!(read.revoked_at.is_none());

    // The logout commits before the mint reaches its gate.
    let r = app
        .http
        .post(format!("{}/v1/session/logout", app.url))
        .bearer_auth(&signed_in.session_token)
        .send()
        .await
        .unwrap();
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
