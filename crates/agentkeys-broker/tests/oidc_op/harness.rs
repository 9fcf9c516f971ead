// Test harness for the real OpenID Provider in this directory (`server.mjs`, npm
// `oidc-provider`). Shared by the unit tests of `src/oidc_login.rs` and, if wanted, the
// broker's integration tests:
//
//     #[path = "../oidc_op/harness.rs"]
//     #[allow(dead_code)]
//     mod oidc_op;                      // in tests/broker/main.rs
//
//     let op = oidc_op::get();          // starts the OP once per test binary, or panics saying why
//     // configure a provider with issuer op.rich (or op.strict), client oidc_op::CLIENT_ID /
//     // oidc_op::CLIENT_SECRET, redirect URI http://127.0.0.1:<any port>/auth/oidc/callback
//     let callback = oidc_op::sign_in(&authorization_url, "alice").await?;   // no browser
//     // `callback` is the redirect URI with code, state and iss: GET it on the broker.
//
// The OP's npm dependencies are installed on first use with `npm ci` (lockfile committed
// here) into `$AGENTKEYS_OIDC_OP_DEPS/<hash>/` or `$CARGO_TARGET_DIR/oidc-op-deps/<hash>/`
// (`<hash>`: of package.json + package-lock.json), and the server runs from there on OS-chosen
// loopback ports. It exits when the test process does (it watches its stdin). Needs Node.js
// >= 20 and npm; without them every caller of `get()` panics with a message saying so.
//
// `click_everything` plays a phished user in a real headless Chromium (playwright-core from the
// same npm install, Debian's chromium binary).
//
// Depends on std, reqwest, serde_json, sha2 and hex only.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The client registered at both issuers (client_secret_basic, PKCE S256 required).
pub const CLIENT_ID: &str = "agentkeys-test";
pub const CLIENT_SECRET: &str = "agentkeys-test-secret";
/// A second client, for "a token for another audience".
pub const OTHER_CLIENT_ID: &str = "agentkeys-other";
pub const OTHER_CLIENT_SECRET: &str = "agentkeys-other-secret";
/// The registered redirect URI is `http://127.0.0.1<REDIRECT_PATH>`, and any port matches
/// (the OP registers the clients as native ones: RFC 8252 7.3).
pub const REDIRECT_PATH: &str = "/auth/oidc/callback";

const INSTALL_TIMEOUT: Duration = Duration::from_secs(300);
const START_TIMEOUT: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub struct TestOp {
    /// Issuer that puts `email` / `email_verified` in the ID token (like Google).
    pub rich: String,
    /// Issuer that gives scope claims at UserInfo only (OIDC Core 5.4).
    pub strict: String,
    _process: Mutex<(Child, ChildStdin)>,
}

static OP: OnceLock<Result<TestOp, String>> = OnceLock::new();

/// The running OP, started on first use; panics with the reason if it cannot start.
pub fn get() -> &'static TestOp {
    match OP.get_or_init(start) {
        Ok(op) => op,
        Err(e) => panic!("the test OpenID Provider could not start: {e}"),
    }
}

/// Drives a login at the OP without a browser: GETs `authorization_url`, posts the OP's
/// login form as `account` (login and consent in one step), follows the OP's redirects with
/// its cookies, and returns the first redirect that leaves the OP: the callback URL with
/// `code`, `state` and `iss` (or `error`).
pub async fn sign_in(authorization_url: &str, account: &str) -> Result<reqwest::Url, String> {
    drive(
        authorization_url,
        &[("login", account), ("action", "approve")],
    )
    .await
}

/// Like [`sign_in`] but the user denies: the callback carries `error=access_denied`.
pub async fn deny(authorization_url: &str) -> Result<reqwest::Url, String> {
    drive(authorization_url, &[("action", "deny")]).await
}

async fn drive(authorization_url: &str, form: &[(&str, &str)]) -> Result<reqwest::Url, String> {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let start = reqwest::Url::parse(authorization_url).map_err(|e| e.to_string())?;
    let origin = start.origin();
    let mut body = reqwest::Url::parse("http://form.invalid/").map_err(|e| e.to_string())?;
    body.query_pairs_mut().extend_pairs(form);
    let body = body.query().unwrap_or_default().to_owned();
    let mut url = start;
    let mut jar: HashMap<String, String> = HashMap::new();
    for _ in 0..8 {
        let cookie = jar
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let request = if url.path().starts_with("/interaction/") {
            client
                .post(url.clone())
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body.clone())
        } else {
            client.get(url.clone())
        };
        let response = request
            .header("cookie", cookie)
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        for set in response.headers().get_all("set-cookie") {
            let set = set.to_str().unwrap_or_default();
            let pair = set.split(';').next().unwrap_or_default();
            if let Some((k, v)) = pair.split_once('=') {
                let expired = set
                    .to_ascii_lowercase()
                    .contains("expires=thu, 01 jan 1970");
                if v.is_empty() || expired {
                    jar.remove(k.trim());
                } else {
                    jar.insert(k.trim().to_owned(), v.to_owned());
                }
            }
        }
        let status = response.status();
        let location = response
            .headers()
            .get("location")
            .and_then(|l| l.to_str().ok())
            .map(str::to_owned);
        let Some(location) = location.filter(|_| status.is_redirection()) else {
            let text = response.text().await.unwrap_or_default();
            return Err(format!("the test OP answered {status} at {url}: {text}"));
        };
        let next = url
            .join(&location)
            .map_err(|e| format!("{location:?}: {e}"))?;
        if next.origin() != origin {
            return Ok(next);
        }
        url = next;
    }
    Err("too many redirects at the test OP".into())
}

/// This file's folder, whichever crate includes it: cargo names sources relative to the
/// workspace root, two levels above every crate's manifest (an absolute `file!()` simply
/// replaces that prefix, which is also right).
#[allow(clippy::join_absolute_paths)]
fn source_dir() -> PathBuf {
    let this = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(file!());
    this.parent().map(Path::to_path_buf).unwrap_or_default()
}

fn deps_root() -> PathBuf {
    if let Some(d) = std::env::var_os("AGENTKEYS_OIDC_OP_DEPS") {
        return PathBuf::from(d);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            // <target>/<profile>/deps/<this test binary>
            std::env::current_exe()
                .ok()?
                .ancestors()
                .nth(3)
                .map(Path::to_path_buf)
        })
        .unwrap_or_else(std::env::temp_dir);
    target.join("oidc-op-deps")
}

/// Runs `cmd` to completion within `limit`, its output into `log`.
fn run(cmd: &mut Command, log: &Path, limit: Duration) -> Result<(), String> {
    let out = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            if status.success() {
                return Ok(());
            }
            let output = std::fs::read_to_string(log).unwrap_or_default();
            return Err(format!("{cmd:?} failed ({status}):\n{output}"));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{cmd:?} did not finish within {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn check_node() -> Result<(), String> {
    let missing = "the OIDC tests need Node.js >= 20 and npm on PATH (the project's Rust \
                   machine image ships Node.js 20; Debian 12's own nodejs package is 18, too old)";
    let out = Command::new("node")
        .arg("--version")
        .output()
        .map_err(|e| format!("{missing}: node: {e}"))?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let major: u32 = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if major < 20 {
        return Err(format!("{missing}: found node {version:?}"));
    }
    Command::new("npm")
        .arg("--version")
        .output()
        .map_err(|e| format!("{missing}: npm: {e}"))?;
    Ok(())
}

/// Installs the OP's npm dependencies once per lockfile; returns the directory the server
/// runs from.
fn install() -> Result<PathBuf, String> {
    let src = source_dir();
    let read = |name: &str| {
        std::fs::read(src.join(name)).map_err(|e| format!("{}/{name}: {e}", src.display()))
    };
    let package = read("package.json")?;
    let lock = read("package-lock.json")?;
    let server = read("server.mjs")?;
    let mut h = Sha256::new();
    h.update(&package);
    h.update(&lock);
    let hash = hex::encode(h.finalize());
    let root = deps_root();
    std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    // One installer at a time across test binaries.
    let lock_file = std::fs::File::create(root.join(".lock"))
        .map_err(|e| format!("{}: {e}", root.display()))?;
    lock_file
        .lock()
        .map_err(|e| format!("locking {}: {e}", root.display()))?;
    let dir = root.join(&hash[..16]);
    let marker = dir.join(".installed");
    if !marker.exists() {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        std::fs::write(dir.join("package.json"), &package).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("package-lock.json"), &lock).map_err(|e| e.to_string())?;
        run(
            Command::new("npm")
                .args(["ci", "--omit=dev", "--no-audit", "--no-fund"])
                .args(["--ignore-scripts", "--loglevel=error"])
                .current_dir(&dir),
            &dir.join("npm-ci.log"),
            INSTALL_TIMEOUT,
        )?;
        std::fs::write(&marker, b"").map_err(|e| e.to_string())?;
    }
    for (name, body) in [
        ("server.mjs", &server[..]),
        ("click_everything.mjs", &read("click_everything.mjs")?[..]),
    ] {
        let target = dir.join(name);
        if std::fs::read(&target).ok().as_deref() != Some(body) {
            let tmp = dir.join(format!("{name}.{}", std::process::id()));
            std::fs::write(&tmp, body).map_err(|e| e.to_string())?;
            std::fs::rename(&tmp, &target).map_err(|e| e.to_string())?;
        }
    }
    Ok(dir)
}

/// A phished user in a real headless Chromium (`CHROMIUM`, default /usr/bin/chromium, from
/// Debian's `chromium` package) opens `url` and clicks every button and same-origin link the
/// page offers. Returns the script's report: `clicked`, the page's final `text`, the `cookies`
/// of the origin (names and flags only).
pub fn click_everything(url: &str) -> Result<serde_json::Value, String> {
    check_node()?;
    let dir = install()?;
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Err(format!(
            "no Chromium at {chromium}: install Debian's chromium package (or set CHROMIUM)"
        ));
    }
    let log = dir.join(format!("click-{}.log", std::process::id()));
    let out = Command::new("node")
        .arg(dir.join("click_everything.mjs"))
        .arg(url)
        .env("CHROMIUM", &chromium)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("node click_everything.mjs: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let _ = std::fs::write(&log, &out.stderr);
        return Err(format!(
            "click_everything.mjs failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).map_err(|e| format!("{line:?}: {e}"))
}

fn start() -> Result<TestOp, String> {
    check_node()?;
    let dir = install()?;
    let script = dir.join("server.mjs");
    let mut child = Command::new("node")
        .arg(&script)
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("node {}: {e}", script.display()))?;
    let stdin = child.stdin.take().ok_or("no stdin")?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut stderr = child.stderr.take().ok_or("no stderr")?;
    let errors = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&errors);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            if let Ok(mut s) = sink.lock()
                && s.len() < 65536
            {
                s.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
    });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.starts_with("{\"ready\"") {
                let _ = tx.send(line);
            }
        }
    });
    let line = match rx.recv_timeout(START_TIMEOUT) {
        Ok(line) => line,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = errors.lock().map(|s| s.clone()).unwrap_or_default();
            return Err(format!(
                "node {} did not report ready within {START_TIMEOUT:?}; its stderr:\n{stderr}",
                script.display()
            ));
        }
    };
    let ready: serde_json::Value =
        serde_json::from_str(&line).map_err(|e| format!("{line:?}: {e}"))?;
    let issuer = |k: &str| {
        ready["issuers"][k]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("no {k} issuer in {line:?}"))
    };
    Ok(TestOp {
        rich: issuer("rich")?,
        strict: issuer("strict")?,
        _process: Mutex::new((child, stdin)),
    })
}
