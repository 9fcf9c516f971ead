//! Documents that must not drift from the code: docs/configuration.md (rendered from the
//! settings registry) and docs/openapi.json (rendered from the routes), and the test names
//! docs/security.md cites. Run with
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

/// Every test docs/security.md names as a guard exists: a renamed or deleted test must not
/// leave the threat model pointing at nothing. Names are the backticked snake_case words with
/// at least three underscores (test names are sentences); each must be a `fn` under crates/.
#[test]
fn the_tests_security_md_names_exist() {
    let doc = std::fs::read_to_string(repo_file("docs/security.md")).unwrap();
    let mut sources = String::new();
    let mut dirs = vec![repo_file("crates")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                if !path.ends_with("node_modules") {
                    dirs.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                sources.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let named: Vec<&str> = doc
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|quoted| quoted.rsplit("::").next().unwrap_or(quoted))
        .filter(|name| {
            name.matches('_').count() >= 3
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
        .collect();
    assert!(named.len() >= 20, "the doc names its tests: {named:?}");
    let missing: Vec<&&str> = named
        .iter()
        .filter(|name| !sources.contains(&format!("fn {name}(")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/security.md names tests that do not exist: {missing:?}"
    );
}

/// Every `SPEC §N` or `SPEC §N.M` cited in the code and the docs names a section of
/// docs/spec.md (`## N.` or `### N.M`) or, for `§N.M` without such a heading, item `M.` of
/// section N's numbered list.
#[test]
fn every_spec_reference_names_a_section_of_docs_spec_md() {
    let spec = std::fs::read_to_string(repo_file("docs/spec.md")).unwrap();
    // Section number -> its text.
    let mut sections: Vec<(String, String)> = Vec::new();
    for line in spec.lines() {
        let heading = line
            .strip_prefix("### ")
            .or_else(|| line.strip_prefix("## "))
            .and_then(|h| h.split_whitespace().next())
            .map(|n| n.trim_end_matches('.').to_owned());
        match heading {
            Some(n) if n.chars().next().is_some_and(|c| c.is_ascii_digit()) => {
                sections.push((n, String::new()))
            }
            _ => {
                if let Some((_, text)) = sections.last_mut() {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
    }
    let resolves = |reference: &str| {
        if sections.iter().any(|(n, _)| n == reference) {
            return true;
        }
        let Some((section, item)) = reference.split_once('.') else {
            return false;
        };
        sections.iter().any(|(n, text)| {
            n == section && text.lines().any(|l| l.starts_with(&format!("{item}. ")))
        })
    };
    let mut files = vec![repo_file("README.md")];
    let mut dirs = vec![repo_file("crates"), repo_file("docs")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path
                .extension()
                .is_some_and(|e| e == "rs" || e == "md" || e == "sh")
            {
                files.push(path);
            }
        }
    }
    let mut cited = 0;
    let mut dangling = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for (i, _) in text.match_indices("SPEC §") {
            let reference: String = text[i + "SPEC §".len()..]
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let reference = reference.trim_end_matches('.');
            if reference.is_empty() {
                continue; // this test's own spelling of the pattern
            }
            cited += 1;
            if !resolves(reference) {
                dangling.push(format!("{}: SPEC §{reference}", file.display()));
            }
        }
    }
    assert!(cited >= 20, "the code cites the spec: {cited}");
    assert!(resolves("11.4") && resolves("5.2") && !resolves("5.9") && !resolves("11.40"));
    assert!(dangling.is_empty(), "references to nothing: {dangling:?}");
}
