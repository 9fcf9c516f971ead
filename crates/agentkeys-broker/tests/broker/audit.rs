use reqwest::StatusCode;
use serde_json::Value;

use crate::app::{TestApp, error_of};

fn count(events: &[agentkeys_store::AuditEvent], kind: &str, outcome: &str) -> usize {
    events
        .iter()
        .filter(|e| e.kind == kind && e.outcome == outcome)
        .count()
}

#[tokio::test]
async fn every_sign_in_and_mint_is_one_audit_event() {
    let app = TestApp::start().await;
    let before = app.audit().await;
    assert_eq!(
        count(&before, "key.generate", "ok"),
        1,
        "the dev key's creation is audited"
    );

    let (wallet, s) = app.sign_in().await;
    for _ in 0..3 {
        app.mint_jwt(&s.session_token).await;
    }
    // A failed sign-in is audited as failed.
    let c = app.challenge(&wallet.address().to_string()).await;
    let wrong = crate::app::sign(&agentkeys_wallet::WalletKey::random(), &c.message);
    assert_eq!(
        app.verify(&c.challenge_id, &wrong).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // A refused mint is audited as denied, with its reason.
    let r = app
        .mint(
            &s.session_token,
            Some(serde_json::json!({"audience": "nope"})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        app.mint("aks_not-a-real-token-but-the-right-length-000", None)
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );

    // A mint without a session proves nothing about anyone: it is counted per client IP and
    // written as one aggregated `anonymous.denied` event at the next flush (SPEC §11.9).
    agentkeys_broker::flush_denials(&app.state).await;

    let events = app.audit().await;
    assert_eq!(count(&events, "sign_in.wallet", "ok"), 1);
    assert_eq!(count(&events, "sign_in.wallet", "failed"), 1);
    assert_eq!(count(&events, "mint", "ok"), 3);
    assert_eq!(count(&events, "mint", "denied"), 1);
    let reasons: Vec<&str> = events
        .iter()
        .filter(|e| e.kind == "mint" && e.outcome == "denied")
        .map(|e| e.details["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["audience_not_allowed"]);
    let anonymous = events
        .iter()
        .find(|e| e.kind == "anonymous.denied")
        .unwrap();
    assert_eq!(anonymous.details["kinds"]["mint.unauthenticated"], 1);

    let mint = events
        .iter()
        .find(|e| e.kind == "mint" && e.outcome == "ok")
        .unwrap();
    assert_eq!(mint.actor.as_deref(), Some(s.omni_account.as_str()));
    for field in ["jti", "aud", "exp", "kid", "session"] {
        assert!(
            mint.details.get(field).is_some(),
            "mint event lacks {field}: {}",
            mint.details
        );
    }
    // Nothing secret is stored: no session token, no JWT.
    let dump = serde_json::to_string(&events).unwrap();
    assert!(!dump.contains(&s.session_token));
    assert!(!dump.contains("eyJ"), "no JWT material in audit");
}

#[tokio::test]
async fn no_durable_audit_event_means_no_jwt() {
    let app = TestApp::start().await;
    let (_, s) = app.sign_in().await;
    app.sql(if app.on_sqlite() {
        "CREATE TRIGGER refuse_mint_audit BEFORE INSERT ON audit_events WHEN NEW.kind = 'mint'
         BEGIN SELECT RAISE(ABORT, 'simulated audit failure'); END;"
    } else {
        "CREATE FUNCTION refuse_mint_audit() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.kind = 'mint' THEN RAISE EXCEPTION 'simulated audit failure'; END IF;
         RETURN NEW; END $$;
         CREATE TRIGGER refuse_mint_audit BEFORE INSERT ON audit_events
         FOR EACH ROW EXECUTE FUNCTION refuse_mint_audit();"
    })
    .await;

    let r = app.mint(&s.session_token, None).await;
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["error"], "unavailable");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("no token was issued"),
        "{text}"
    );
    assert!(!text.contains("eyJ"), "no token in a failed response");
    assert!(!text.contains("simulated"), "no internals in the answer");
    assert_eq!(
        app.audit()
            .await
            .iter()
            .filter(|e| e.kind == "mint")
            .count(),
        0
    );
    // On SQLite one refused event is not an outage: the batch around it committed, the store
    // is ready. PostgreSQL writes a batch's audit rows with its COMMIT, so the refused row
    // failed its batch's commit, and the store is not ready until a write commits again.
    // (A commit that fails for real, on a full disk: tests/reliability's full-disk harness.)
    let ready = if app.on_sqlite() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    assert_eq!(app.get("/readyz").await.status(), ready);

    app.sql(if app.on_sqlite() {
        "DROP TRIGGER refuse_mint_audit"
    } else {
        "DROP TRIGGER refuse_mint_audit ON audit_events"
    })
    .await;
    assert_eq!(
        app.mint(&s.session_token, None).await.status(),
        StatusCode::OK
    );
    assert_eq!(app.get("/readyz").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn audit_verify_passes_then_names_the_tampered_event() {
    let app = TestApp::start().await;
    let (_, s) = app.sign_in().await;
    for _ in 0..4 {
        app.mint_jwt(&s.session_token).await;
    }
    let verify = || {
        app.broker_command()
            .args(["audit", "verify"])
            .output()
            .unwrap()
    };
    let ok = verify();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("audit chain ok: 6 events"));

    app.sql("UPDATE audit_events SET details = '{\"aud\":\"forged\"}' WHERE seq = 4")
        .await;
    let bad = verify();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("seq 4"), "{stderr}");

    // A deleted event is found too.
    app.sql("UPDATE audit_events SET details = (SELECT details FROM audit_events WHERE seq = 5) WHERE seq = 4").await;
    app.sql("DELETE FROM audit_events WHERE seq = 3").await;
    let stderr = String::from_utf8_lossy(&verify().stderr).into_owned();
    assert!(stderr.contains("seq 3"), "{stderr}");
}

#[tokio::test]
async fn concurrent_mints_share_commits_and_keep_the_chain_intact() {
    let app = TestApp::start().await;
    let (_, s) = app.sign_in().await;
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let http = app.http.clone();
        let url = format!("{}/v1/mint-oidc-jwt", app.url);
        let token = s.session_token.clone();
        tasks.push(tokio::spawn(async move {
            http.post(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    let events = app.audit().await;
    assert_eq!(events.iter().filter(|e| e.kind == "mint").count(), 64);
    let mut v = agentkeys_store::audit::ChainVerifier::default();
    for e in &events {
        v.check(e).unwrap();
    }
    let _ = error_of; // shared helper used by other modules
}
