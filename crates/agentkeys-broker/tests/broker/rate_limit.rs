use reqwest::StatusCode;

use crate::app::{TestApp, error_of};

#[tokio::test]
async fn per_minute_limit_gives_429_with_retry_after_and_actors_are_independent() {
    let app = TestApp::start_with(|s| {
        s.mint_rate_per_minute = 3;
        s.mint_rate_per_hour = 5;
    })
    .await;
    // Align to the start of a minute so the window arithmetic below is exact.
    use agentkeys_broker::clock::Clock;
    let now = app.clock.now();
    app.clock.set(now - now % 3600 + 7200);

    let (_, a) = app.sign_in().await;
    let (_, b) = app.sign_in().await;
    for _ in 0..3 {
        assert_eq!(
            app.mint(&a.session_token, None).await.status(),
            StatusCode::OK
        );
    }
    app.clock.advance(10);
    let r = app.mint(&a.session_token, None).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: i64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(retry, 50, "the rest of the minute window");
    assert_eq!(error_of(r).await.1, "rate_limited");

    // Another actor is unaffected.
    assert_eq!(
        app.mint(&b.session_token, None).await.status(),
        StatusCode::OK
    );

    // A new minute opens the minute window; the hourly window (5) then binds.
    app.clock.advance(50);
    assert_eq!(
        app.mint(&a.session_token, None).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.mint(&a.session_token, None).await.status(),
        StatusCode::OK
    );
    let r = app.mint(&a.session_token, None).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: i64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(retry, 3600 - 60, "the rest of the hour window");

    // Denied attempts did not consume anything: the next hour is a fresh start.
    app.clock.advance(3600 - 60);
    assert_eq!(
        app.mint(&a.session_token, None).await.status(),
        StatusCode::OK
    );
}

#[test]
fn limited_actions_keep_their_stored_bucket_keys_and_windows() {
    use agentkeys_broker::limits::LimitedAction;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = crate::app::settings(dir.path(), "http://127.0.0.1:1");
    s.mint_rate_per_minute = 3;
    s.mint_rate_per_hour = 5;
    let keys = |a: LimitedAction| {
        a.buckets(&s)
            .into_iter()
            .map(|(k, w)| (k, w.seconds, w.limit))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        keys(LimitedAction::Mint { actor: "omni" }),
        [("omni".to_owned(), 60, 3), ("omni".to_owned(), 3600, 5)]
    );
    let email = keys(LimitedAction::EmailStart {
        address: "a@example.com",
        ip: "::ffff:10.0.0.1".parse().unwrap(),
    });
    assert_eq!(email[0].0, "email:a@example.com");
    assert_eq!(email[1].0, "ip:10.0.0.1");
    assert_eq!(
        keys(LimitedAction::PairingApproval { master: "m" }),
        [("approve:m".to_owned(), 600, 20)]
    );
}
