//! `/metrics` behind a bearer token, or only on its own listener.

use agentkeys_broker::metrics::MetricsToken;
use reqwest::StatusCode;

use crate::app::{TestApp, error_of};

const TOKEN: &str = "metrics-token-0123456789abcdef";

#[tokio::test]
async fn with_a_token_set_metrics_need_it() {
    let app =
        TestApp::start_with(|s| s.metrics_token = Some(MetricsToken::new(TOKEN).unwrap())).await;
    let url = format!("{}/metrics", app.url);

    let r = app.http.get(&url).send().await.unwrap();
    assert_eq!(
        r.headers()["www-authenticate"].to_str().unwrap(),
        r#"Bearer realm="metrics""#
    );
    assert_eq!(error_of(r).await.0, StatusCode::UNAUTHORIZED, "no token");
    for wrong in [
        "",
        "metrics-token-0123456789abcdeX",
        "metrics-token-0123456789abcdef0",
    ] {
        let r = app.http.get(&url).bearer_auth(wrong).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{wrong:?}");
    }
    let r = app.http.get(&url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("# TYPE"));
}

#[tokio::test]
async fn with_a_metrics_listener_the_main_listener_does_not_serve_metrics() {
    let app = TestApp::start_with(|s| {
        s.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        s.metrics_token = Some(MetricsToken::new(TOKEN).unwrap());
    })
    .await;
    let main = app.get("/metrics").await;
    assert_eq!(error_of(main).await.0, StatusCode::NOT_FOUND);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_url = format!("http://{}/metrics", listener.local_addr().unwrap());
    tokio::spawn(agentkeys_broker::http::serve_metrics(
        listener,
        app.state.clone(),
        std::future::pending(),
    ));
    let r = app.http.get(&metrics_url).send().await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "the token applies there too"
    );
    let r = app
        .http
        .get(&metrics_url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // That listener serves nothing else.
    let other = metrics_url.replace("/metrics", "/healthz");
    let r = app.http.get(&other).send().await.unwrap();
    assert_eq!(error_of(r).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn without_either_setting_metrics_stay_open_as_in_dev() {
    let app = TestApp::start().await;
    assert_eq!(app.get("/metrics").await.status(), StatusCode::OK);
}
