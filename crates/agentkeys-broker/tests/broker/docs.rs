//! Documents that must not drift from the code: docs/configuration.md (rendered from the
//! settings registry) and docs/openapi.json (rendered from the routes). Run with
//! `UPDATE_DOCS=1` to rewrite them after an intended change.

use std::path::PathBuf;

use crate::app::TestApp;

fn repo_file(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

fn check_or_update(rel: &str, generated: &str) {
    let path = repo_file(rel);
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(&path, generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{rel} is out of date with the code; run `UPDATE_DOCS=1 cargo test -p agentkeys-broker --test broker docs` and commit"
    );
}

#[test]
fn configuration_doc_matches_the_settings_registry() {
    check_or_update(
        "docs/configuration.md",
        &agentkeys_broker::config::render_markdown(),
    );
}

#[tokio::test]
async fn openapi_doc_matches_the_routes() {
    let app = TestApp::start().await;
    let served: serde_json::Value = app.get("/openapi.json").await.json().await.unwrap();
    let mut text = serde_json::to_string_pretty(&served).unwrap();
    text.push('\n');
    check_or_update("docs/openapi.json", &text);

    // Every documented path answers with something other than the not-found fallback.
    for (path, item) in served["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = app
                .http
                .request(m, format!("{}{path}", app.url))
                .send()
                .await
                .unwrap();
            let body = r.text().await.unwrap();
            assert!(
                !body.contains("no such route"),
                "{method} {path} is documented but not routed"
            );
        }
    }
}
