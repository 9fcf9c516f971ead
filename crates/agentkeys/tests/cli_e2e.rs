//! End to end: the real `agentkeys-broker` binary in `--dev` mode on a free loopback port, driven
//! by the real `agentkeys` binary.
//!
//! Cargo does not build other packages' binaries for this test, so build the broker first:
//!
//! ```text
//! cargo build -p agentkeys-broker && cargo test -p agentkeys --test cli_e2e
//! ```
//!
//! The broker binary is looked up next to this test executable (`target/<profile>/`), or taken
//! from `AGENTKEYS_BROKER_BIN`. A missing broker fails the test; it is never skipped.
//!
//! Email sign-in runs against a real SMTP server: Python's aiosmtpd, installed on first use into
//! a venv under the cargo target dir (needs python3 with venv, and PyPI once).

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentkeys_types::{OmniAccount, WalletAddress};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

const HEALTH_TIMEOUT: Duration = Duration::from_secs(30);

fn broker_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("AGENTKEYS_BROKER_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "AGENTKEYS_BROKER_BIN={} is not a file",
            p.display()
        );
        return p;
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/cli_e2e-<hash> → target/<profile>/
    let dir = exe
        .parent()
        .and_then(|deps| {
            if deps.ends_with("deps") {
                deps.parent()
            } else {
                Some(deps)
            }
        })
        .expect("test executable has a parent directory");
    let bin = dir.join(format!("agentkeys-broker{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "the broker binary {} does not exist: build it first with `cargo build -p agentkeys-broker` \
         (same profile and CARGO_TARGET_DIR as this test), or set AGENTKEYS_BROKER_BIN",
        bin.display()
    );
    bin
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// The broker process; killed when dropped, so a failing test leaves nothing running.
struct Broker {
    child: Child,
    url: String,
    port: u16,
    log: PathBuf,
    _data: tempfile::TempDir,
}

impl Broker {
    fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts with extra `serve` flags.
    fn start_with(extra: &[&str]) -> Self {
        Self::start_with_env(extra, &[])
    }

    /// Starts with extra `serve` flags and environment variables.
    fn start_with_env(extra: &[&str], env: &[(&str, String)]) -> Self {
        let bin = broker_bin();
        let data = tempfile::tempdir().expect("tempdir");
        let log = data.path().join("broker.log");
        let log_file = fs::File::create(&log).expect("log file");
        let port = free_port();
        let child = Command::new(&bin)
            .args([
                "serve",
                "--dev",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(data.path().join("data"))
            .args(extra)
            .env_remove("BROKER_ISSUER")
            .env_remove("BROKER_DATABASE_URL")
            .env_remove("BROKER_SMTP_HOST")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("dup log"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut broker = Broker {
            child,
            url: format!("http://127.0.0.1:{port}"),
            port,
            log,
            _data: data,
        };
        broker.wait_healthy();
        broker
    }

    fn logs(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + HEALTH_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the broker exited during start-up ({status}); its output:\n{}",
                    self.logs()
                );
            }
            if http_get_status(self.port, "/healthz") == Some(200) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "the broker did not answer 200 on {}/healthz within {HEALTH_TIMEOUT:?}; its output:\n{}",
                    self.url,
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Status code of a GET, or None if there is no answer yet.
fn http_get_status(port: u16, path: &str) -> Option<u16> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .ok()?;
        let answer = client
            .get(format!("http://127.0.0.1:{port}{path}"))
            .send()
            .await
            .ok()?;
        Some(answer.status().as_u16())
    })
}

/// The `agentkeys` binary with an isolated config dir and home.
struct Cli {
    home: tempfile::TempDir,
    broker_url: String,
}

impl Cli {
    fn new(broker_url: &str) -> Self {
        Cli {
            home: tempfile::tempdir().expect("tempdir"),
            broker_url: broker_url.to_owned(),
        }
    }

    fn config_dir(&self) -> PathBuf {
        self.home.path().join("config")
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_agentkeys"))
            .args(args)
            .env("AGENTKEYS_BROKER_URL", &self.broker_url)
            .env("AGENTKEYS_CONFIG_DIR", self.config_dir())
            .env("HOME", self.home.path())
            .env_remove("AGENTKEYS_PROFILE")
            .env_remove("XDG_CONFIG_HOME")
            .stdin(Stdio::null())
            .output()
            .expect("run agentkeys")
    }

    /// Starts the binary with stdout and stderr piped, for commands that run for a while.
    fn spawn(&self, args: &[&str]) -> Running {
        let child = Command::new(env!("CARGO_BIN_EXE_agentkeys"))
            .args(args)
            .env("AGENTKEYS_BROKER_URL", &self.broker_url)
            .env("AGENTKEYS_CONFIG_DIR", self.config_dir())
            .env("HOME", self.home.path())
            .env_remove("AGENTKEYS_PROFILE")
            .env_remove("XDG_CONFIG_HOME")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn agentkeys");
        Running { child: Some(child) }
    }

    /// Runs and requires success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "`agentkeys {}` failed ({}):\nstdout: {}\nstderr: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    /// Runs and requires failure with `code`; returns stderr.
    fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(code),
            "`agentkeys {}` should exit {code}:\nstdout: {}\nstderr: {stderr}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            out.stdout.is_empty(),
            "nothing on stdout on failure: {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "one line on stderr: {stderr:?}"
        );
        stderr
    }
}

/// A running `agentkeys`; killed when dropped, so a failing test leaves nothing behind.
struct Running {
    child: Option<Child>,
}

impl Running {
    /// Reads stderr until a line starting with `prefix`; returns the rest of that line. The rest
    /// of stderr is collected by a thread and returned by [`Running::finish`].
    fn stderr_line(&mut self, prefix: &str) -> (String, std::thread::JoinHandle<String>) {
        use std::io::BufRead;
        let child = self.child.as_mut().expect("running");
        let mut reader = std::io::BufReader::new(child.stderr.take().expect("stderr piped"));
        let mut seen = String::new();
        loop {
            let mut line = String::new();
            let n = reader.read_line(&mut line).expect("read stderr");
            assert!(
                n > 0,
                "stderr ended before a line starting with {prefix:?}:\n{seen}"
            );
            seen.push_str(&line);
            if let Some(rest) = line.strip_prefix(prefix) {
                let rest = rest.trim().to_owned();
                let drain = std::thread::spawn(move || {
                    let mut tail = String::new();
                    let _ = reader.read_to_string(&mut tail);
                    seen + &tail
                });
                return (rest, drain);
            }
        }
    }

    /// Types a line at the command's prompt (its standard input).
    fn type_line(&mut self, text: &str) {
        let child = self.child.as_mut().expect("running");
        let stdin = child.stdin.as_mut().expect("stdin piped");
        writeln!(stdin, "{text}").expect("type into the prompt");
        stdin.flush().expect("flush");
    }

    /// Waits (bounded) for the exit; returns the status and stdout.
    fn finish(&mut self, timeout: Duration) -> (std::process::ExitStatus, String) {
        let mut child = self.child.take().expect("running");
        let mut stdout = child.stdout.take().expect("stdout piped");
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        });
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("agentkeys did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        (status, reader.join().expect("stdout thread"))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn jwt_payload(jwt: &str) -> serde_json::Value {
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWS compact token has 3 parts: {jwt}");
    let bytes = URL_SAFE_NO_PAD
        .decode(parts[1])
        .expect("payload is base64url");
    serde_json::from_slice(&bytes).expect("payload is JSON")
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

#[test]
fn wallet_login_whoami_token_logout() {
    let broker = Broker::start();
    let cli = Cli::new(&broker.url);
    let key = cli.home.path().join("wallet.key");
    let key_s = key.to_str().expect("utf-8 path");

    // key generate: prints the address; file 0600; never overwritten without --force.
    let address = cli
        .ok(&["key", "generate", "--out", key_s])
        .trim()
        .to_owned();
    let wallet: WalletAddress = address.parse().expect("generate prints an address");
    assert_eq!(address, wallet.as_str(), "printed lowercase");
    #[cfg(unix)]
    assert_eq!(mode(&key), 0o600);
    let err = cli.fails(&["key", "generate", "--out", key_s], 1);
    assert!(err.contains("--force"), "{err}");
    assert_eq!(
        cli.ok(&["key", "address", "--key-file", key_s]).trim(),
        address
    );

    // login wallet
    let out = cli.ok(&["login", "wallet", "--key-file", key_s]);
    let omni = OmniAccount::for_wallet(&wallet);
    assert!(
        out.contains(wallet.as_str()) && out.contains(omni.as_str()),
        "{out}"
    );
    let session_file = cli.config_dir().join("profiles/default/session.json");
    #[cfg(unix)]
    {
        assert_eq!(mode(&session_file), 0o600);
        assert_eq!(mode(session_file.parent().expect("dir")), 0o700);
    }

    // whoami
    let out = cli.ok(&["whoami"]);
    assert!(out.contains(wallet.as_str()), "{out}");
    let me: serde_json::Value = serde_json::from_str(&cli.ok(&["whoami", "--json"])).expect("json");
    assert_eq!(me["wallet"], wallet.as_str());
    assert_eq!(me["omni_account"], omni.as_str());
    assert_eq!(me["kind"], "master");

    // token
    let out = cli.ok(&["token"]);
    assert_eq!(out.lines().count(), 1, "just the JWT: {out:?}");
    let jwt = out.trim();
    let claims = jwt_payload(jwt);
    assert_eq!(claims["agentkeys_user_wallet"], wallet.as_str(), "{claims}");
    assert_eq!(
        claims["sub"],
        format!("agentkeys:user:{wallet}"),
        "{claims}"
    );
    assert_eq!(claims["agentkeys_actor_omni"], omni.as_str(), "{claims}");
    assert_eq!(claims["aud"], "sts.amazonaws.com", "{claims}");
    assert_eq!(claims["iss"], broker.url, "{claims}");
    assert!(
        claims.get("https://aws.amazon.com/roles").is_none(),
        "{claims}"
    );
    // The session token appears in no output.
    let saved: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&session_file).expect("read session"))
            .expect("json");
    let session_token = saved["session_token"]
        .as_str()
        .expect("token saved")
        .to_owned();
    assert!(!jwt.contains(&session_token));

    // token --role-arn pins the role; a non-allowed audience is the broker's 403, shown.
    let arn = "arn:aws:iam::123456789012:role/agentkeys-data";
    let claims = jwt_payload(cli.ok(&["token", "--role-arn", arn]).trim());
    assert_eq!(claims["https://aws.amazon.com/roles"], arn, "{claims}");
    let err = cli.fails(
        &["token", "--audience", "not-an-allowed-audience.example"],
        1,
    );
    assert!(err.contains("403"), "{err}");

    // logout, with a copy of the session kept to show the broker revoked it.
    let copy = fs::read(&session_file).expect("copy session");
    let out = cli.ok(&["logout"]);
    assert!(out.to_lowercase().contains("signed out"), "{out}");
    assert!(!session_file.exists(), "logout deletes the saved session");

    // token now fails: no saved session.
    let err = cli.fails(&["token"], 3);
    assert!(
        err.contains("agentkeys login wallet --key-file") && err.contains("again"),
        "{err}"
    );

    // Restoring the old session does not help: the broker answers 401 and we say log in again.
    fs::write(&session_file, &copy).expect("restore");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&session_file, fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let err = cli.fails(&["token"], 3);
    assert!(
        err.contains("agentkeys login wallet --key-file") && err.contains("again"),
        "{err}"
    );
    let err = cli.fails(&["whoami"], 3);
    assert!(err.contains("again"), "{err}");

    // And signing in again works.
    cli.ok(&["login", "wallet", "--key-file", key_s]);
    jwt_payload(cli.ok(&["token"]).trim());

    // The broker never logged the session token or the JWT.
    let logs = broker.logs();
    assert!(
        !logs.contains(&session_token),
        "session token in broker logs"
    );
    assert!(!logs.contains(jwt), "JWT in broker logs");
}

#[test]
fn rate_limit_says_when_to_retry() {
    let broker = Broker::start_with(&["--mint-rate-per-minute", "1"]);
    let cli = Cli::new(&broker.url);
    let key = cli.home.path().join("k");
    let key_s = key.to_str().expect("utf-8 path");
    cli.ok(&["key", "generate", "--out", key_s]);
    cli.ok(&["login", "wallet", "--key-file", key_s]);
    cli.ok(&["token"]);
    let err = cli.fails(&["token"], 5);
    assert!(
        err.contains("rate limiting") && err.contains("retry in"),
        "{err}"
    );
}

#[test]
fn unreachable_broker_is_named() {
    let port = free_port(); // nothing listens here after the listener is dropped
    let url = format!("http://127.0.0.1:{port}");
    let cli = Cli::new(&url);
    let key = cli.home.path().join("k");
    let key_s = key.to_str().expect("utf-8 path");
    cli.ok(&["key", "generate", "--out", key_s]);
    let err = cli.fails(&["login", "wallet", "--key-file", key_s], 4);
    assert!(
        err.contains(&url) && err.contains("AGENTKEYS_BROKER_URL"),
        "{err}"
    );
}

#[cfg(unix)]
#[test]
fn loose_key_file_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let cli = Cli::new("http://127.0.0.1:9");
    let key = cli.home.path().join("k");
    let key_s = key.to_str().expect("utf-8 path");
    cli.ok(&["key", "generate", "--out", key_s]);
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = cli.fails(&["login", "wallet", "--key-file", key_s], 1);
    assert!(err.contains(&format!("chmod 600 {key_s}")), "{err}");
}

/// A stand-in for STS: answers each connection with the same `AssumeRoleWithWebIdentity`
/// success, `answers` times, then stops listening. Joining gives the request bodies.
struct FakeSts {
    url: String,
    handle: std::thread::JoinHandle<Vec<String>>,
}

impl FakeSts {
    const ANSWER: &'static str = r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleWithWebIdentityResult><Credentials><AccessKeyId>ASIAFAKE</AccessKeyId><SecretAccessKey>fake'secret</SecretAccessKey><SessionToken>fake-token</SessionToken><Expiration>2099-01-01T00:00:00Z</Expiration></Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>"#;

    fn start(answers: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let bodies = Arc::new(Mutex::new(Vec::new()));
                let done = Arc::new(tokio::sync::Notify::new());
                let app = axum::Router::new().fallback({
                    let (bodies, done) = (Arc::clone(&bodies), Arc::clone(&done));
                    move |body: String| async move {
                        let mut seen = bodies.lock().expect("bodies");
                        seen.push(body);
                        // The last answer stops the server: later calls find nothing listening.
                        if seen.len() == answers {
                            done.notify_one();
                        }
                        (
                            [(axum::http::header::CONTENT_TYPE, "text/xml")],
                            Self::ANSWER,
                        )
                    }
                });
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move { done.notified().await })
                    .await
                    .expect("fake STS");
                bodies.lock().expect("bodies").clone()
            })
        });
        FakeSts { url, handle }
    }

    fn bodies(self) -> Vec<String> {
        self.handle.join().expect("fake STS thread")
    }
}

fn form_value<'a>(body: &'a str, name: &str) -> &'a str {
    body.split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("{name} not in {body}"))
}

#[test]
fn aws_credentials_credential_process_and_exec_against_a_fake_sts() {
    let broker = Broker::start();
    let cli = Cli::new(&broker.url);
    let key = cli.home.path().join("k");
    let key_s = key.to_str().expect("utf-8 path");
    let wallet = cli
        .ok(&["key", "generate", "--out", key_s])
        .trim()
        .to_owned();
    cli.ok(&["login", "wallet", "--key-file", key_s]);
    let omni = OmniAccount::for_wallet(&wallet.parse::<WalletAddress>().expect("wallet"));

    // Four STS calls are expected: credentials (env), credentials (json), credential-process
    // (cache miss) and exec. After that nothing listens.
    let sts = FakeSts::start(4);
    let sts_url = sts.url.clone();
    let arn = "arn:aws:iam:::role/agentkeys-data";
    let common = [
        "--role-arn",
        arn,
        "--sts-endpoint",
        &sts_url,
        "--region",
        "eu-west-1",
    ];
    let with = |args: &[&str]| -> Vec<String> {
        args.iter()
            .chain(common.iter())
            .map(|s| (*s).to_owned())
            .collect()
    };
    let run_ok = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        cli.ok(&refs)
    };

    let env = run_ok(with(&["aws", "credentials", "--format", "env"]));
    assert!(
        env.contains("export AWS_ACCESS_KEY_ID='ASIAFAKE'\n"),
        "{env}"
    );
    assert!(
        env.contains("export AWS_SECRET_ACCESS_KEY='fake'\\''secret'\n"),
        "{env}"
    );
    assert!(env.contains("export AWS_REGION='eu-west-1'\n"), "{env}");
    assert!(
        env.contains(&format!("export AGENTKEYS_USER_WALLET='{wallet}'\n")),
        "{env}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&run_ok(with(&["aws", "credentials"]))).expect("json");
    assert_eq!(
        json,
        serde_json::json!({"Version": 1, "AccessKeyId": "ASIAFAKE", "SecretAccessKey": "fake'secret",
                           "SessionToken": "fake-token", "Expiration": "2099-01-01T00:00:00Z"})
    );

    // credential-process: the first call fills the cache (0600), the second is served from it.
    let first = run_ok(with(&["aws", "credential-process"]));
    let cache_dir = cli.config_dir().join("profiles/default/aws-credentials");
    let files: Vec<PathBuf> = fs::read_dir(&cache_dir)
        .expect("cache dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    #[cfg(unix)]
    assert_eq!(mode(&files[0]), 0o600);

    // exec: the command sees the credentials and its exit code is ours.
    let mut exec_args = with(&["exec"]);
    exec_args.extend(
        [
            "--",
            "sh",
            "-c",
            "test \"$AWS_SESSION_TOKEN\" = fake-token && test \"$AWS_DEFAULT_REGION\" = eu-west-1 \
             && echo \"wallet=$AGENTKEYS_USER_WALLET\" && exit 7",
        ]
        .map(str::to_owned),
    );
    let refs: Vec<&str> = exec_args.iter().map(String::as_str).collect();
    let out = cli.run(&refs);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("wallet={wallet}\n")
    );

    // All four STS answers are used: the fake STS is gone. A cache hit needs neither STS nor the
    // broker.
    let bodies = sts.bodies();
    assert_eq!(bodies.len(), 4);
    let second = run_ok(with(&["aws", "credential-process"]));
    assert_eq!(first, second);
    drop(broker);
    assert_eq!(run_ok(with(&["aws", "credential-process"])), first);

    // What STS was asked: the role, a unique session name, a token pinned to the role.
    let mut names = std::collections::HashSet::new();
    for body in &bodies {
        assert_eq!(form_value(body, "Action"), "AssumeRoleWithWebIdentity");
        assert_eq!(
            form_value(body, "RoleArn"),
            "arn%3Aaws%3Aiam%3A%3A%3Arole%2Fagentkeys-data"
        );
        assert_eq!(form_value(body, "DurationSeconds"), "3600");
        let name = form_value(body, "RoleSessionName");
        assert!(
            name.starts_with(&format!("agentkeys-{}-", &omni.as_str()[..16])) && name.len() <= 64,
            "{name}"
        );
        names.insert(name.to_owned());
        let claims = jwt_payload(form_value(body, "WebIdentityToken"));
        assert_eq!(claims["https://aws.amazon.com/roles"], arn, "{claims}");
        assert_eq!(claims["agentkeys_user_wallet"], wallet.as_str(), "{claims}");
    }
    assert_eq!(names.len(), 4, "session names are unique: {names:?}");

    // logout --local deletes the cache with the session.
    cli.ok(&["logout", "--local"]);
    assert!(!cache_dir.exists());
    let err = cli.fails(&refs_of(&with(&["aws", "credential-process"])), 3);
    assert!(err.contains("login wallet"), "{err}");
}

fn refs_of(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn sts_refusal_and_bad_input_are_explained() {
    let broker = Broker::start();
    let cli = Cli::new(&broker.url);
    let key = cli.home.path().join("k");
    let key_s = key.to_str().expect("utf-8 path");
    cli.ok(&["key", "generate", "--out", key_s]);
    cli.ok(&["login", "wallet", "--key-file", key_s]);

    // Nothing listens on the STS endpoint.
    let sts = format!("http://127.0.0.1:{}", free_port());
    let err = cli.fails(
        &[
            "aws",
            "credentials",
            "--role-arn",
            "arn:aws:iam:::role/r",
            "--sts-endpoint",
            &sts,
        ],
        6,
    );
    assert!(
        err.contains(&sts) && err.contains("--sts-endpoint"),
        "{err}"
    );

    // A role ARN that is not one is refused before anything is minted.
    let err = cli.fails(&["exec", "--role-arn", "nope", "--", "true"], 1);
    assert!(err.contains("--role-arn"), "{err}");
    let err = cli.fails(
        &[
            "aws",
            "credentials",
            "--role-arn",
            "arn:aws:iam:::role/r",
            "--sts-endpoint",
            "ftp://x",
        ],
        1,
    );
    assert!(err.contains("--sts-endpoint"), "{err}");
}

/// A master signed in through the CLI: its Cli, key file and omni.
fn signed_in_master(broker: &Broker) -> (Cli, String, OmniAccount) {
    let cli = Cli::new(&broker.url);
    let key = cli.home.path().join("wallet.key");
    let key_s = key.to_str().expect("utf-8 path").to_owned();
    let wallet: WalletAddress = cli
        .ok(&["key", "generate", "--out", &key_s])
        .trim()
        .parse()
        .expect("address");
    cli.ok(&["login", "wallet", "--key-file", &key_s]);
    (cli, key_s, OmniAccount::for_wallet(&wallet))
}

/// Runs `agentkeys agent pair --json` as `agent`, approves its code as `master` with `label`
/// (the approval's outcome is returned by `approve`), and returns the pair command's JSON.
fn pair(
    agent: &Cli,
    master: &Cli,
    approve: impl FnOnce(&Cli, &str) -> bool,
) -> Option<serde_json::Value> {
    let mut running = agent.spawn(&["agent", "pair", "--json", "--timeout", "60"]);
    let (code, stderr) = running.stderr_line("Pairing code: ");
    assert_eq!(code.len(), 9, "ABCD-EFGH: {code:?}");
    if !approve(master, &code) {
        return None;
    }
    let (status, stdout) = running.finish(Duration::from_secs(30));
    let stderr = stderr.join().expect("stderr thread");
    assert!(
        status.success(),
        "agent pair failed ({status}):\nstdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        stderr.contains(&format!("agentkeys agents approve {code} --label NAME")),
        "{stderr}"
    );
    Some(serde_json::from_str(&stdout).expect("pair --json prints JSON"))
}

/// A fresh agent profile (`agent init`), paired with `master`, which approves it as `label`.
fn paired_agent(broker: &Broker, master: &Cli, label: &str) -> Cli {
    let agent = Cli::new(&broker.url);
    agent.ok(&["agent", "init"]);
    pair(&agent, master, |m, code| {
        m.ok(&["agents", "approve", code, "--label", label]);
        true
    })
    .expect("paired");
    agent
}

#[test]
fn agent_pairing_and_lifecycle() {
    let broker = Broker::start();
    let (master, master_key, master_omni) = signed_in_master(&broker);
    let master_wallet = master
        .ok(&["key", "address", "--key-file", &master_key])
        .trim()
        .to_owned();

    // agent init: a 0600 device key in the profile dir, never overwritten without --force.
    let agent = Cli::new(&broker.url);
    let device = agent.ok(&["agent", "init"]).trim().to_owned();
    let device: WalletAddress = device.parse().expect("init prints an address");
    let device_key = agent.config_dir().join("profiles/default/device.key");
    #[cfg(unix)]
    assert_eq!(mode(&device_key), 0o600);
    let err = agent.fails(&["agent", "init"], 1);
    assert!(err.contains("--force"), "{err}");

    // Pairing: the agent shows a code, the master approves it.
    let approved = pair(&agent, &master, |m, code| {
        let out = m.ok(&["agents", "approve", code, "--label", "bot"]);
        assert!(out.contains("bot"), "{out}");
        true
    })
    .expect("paired");
    let omni = OmniAccount::for_agent(&master_omni, "bot");
    assert_eq!(approved["agent_omni"], omni.as_str(), "{approved}");
    assert_eq!(approved["label"], "bot");
    assert_eq!(approved["device_address"], device.as_str());
    assert_eq!(approved["status"], "active");
    let session_file = agent.config_dir().join("profiles/default/session.json");
    #[cfg(unix)]
    assert_eq!(mode(&session_file), 0o600);
    let saved: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&session_file).expect("read")).expect("json");
    assert_eq!(saved["kind"], "agent");
    let agent_token = saved["session_token"].as_str().expect("token").to_owned();

    // whoami says agent.
    let me: serde_json::Value =
        serde_json::from_str(&agent.ok(&["whoami", "--json"])).expect("json");
    assert_eq!(me["kind"], "agent");
    assert_eq!(me["omni_account"], omni.as_str());
    assert!(me["wallet"].is_null(), "{me}");
    let text = agent.ok(&["whoami"]);
    assert!(
        text.contains("kind:         agent") && text.contains("label:        bot"),
        "{text}"
    );

    // The agent's JWT names only the agent: never its master's wallet or omni.
    let jwt = agent.ok(&["token"]).trim().to_owned();
    let claims = jwt_payload(&jwt);
    assert_eq!(claims["sub"], format!("agentkeys:agent:{omni}"), "{claims}");
    assert_eq!(claims["agentkeys_user_wallet"], omni.as_str(), "{claims}");
    assert_eq!(claims["agentkeys_actor_omni"], omni.as_str(), "{claims}");
    let text = claims.to_string();
    assert!(
        !text.contains(&master_wallet) && !text.contains(master_omni.as_str()),
        "{claims}"
    );

    // An agent cannot manage agents.
    let err = agent.fails(&["agents", "list"], 1);
    assert!(err.contains("403 masters_only"), "{err}");

    // The master sees it.
    let list: serde_json::Value =
        serde_json::from_str(&master.ok(&["agents", "list", "--json"])).expect("json");
    assert_eq!(list["agents"][0]["label"], "bot", "{list}");
    assert_eq!(list["agents"][0]["status"], "active", "{list}");
    let text = master.ok(&["agents", "list"]);
    assert!(
        text.starts_with("LABEL") && text.contains(omni.as_str()),
        "{text}"
    );

    // Approval errors: a bad code is refused locally, an unknown one by the broker; a second
    // device cannot take a label in use, but gets paired under another.
    let err = master.fails(&["agents", "approve", "nope", "--label", "x"], 1);
    assert!(err.contains("ABCD-EFGH"), "{err}");
    let err = master.fails(&["agents", "approve", "2222-2222", "--label", "x"], 1);
    assert!(err.contains("404"), "{err}");
    let agent2 = Cli::new(&broker.url);
    agent2.ok(&["agent", "init"]);
    let second = pair(&agent2, &master, |m, code| {
        let err = m.fails(&["agents", "approve", code, "--label", "bot"], 1);
        assert!(err.contains("409"), "{err}");
        // Lower case and without the dash works too.
        let typed = code.replace('-', "").to_lowercase();
        m.ok(&["agents", "approve", &typed, "--label", "bot-2"]);
        true
    })
    .expect("second agent paired");
    assert_eq!(
        second["agent_omni"],
        OmniAccount::for_agent(&master_omni, "bot-2").as_str()
    );

    // Suspend (by label): the agent can no longer mint, with a clear 403. Resume (by omni).
    let out = master.ok(&["agents", "suspend", "bot"]);
    assert!(out.contains("Suspended agent bot"), "{out}");
    let err = agent.fails(&["token"], 1);
    assert!(
        err.contains("403 agent_suspended") && err.contains("agentkeys agents resume"),
        "{err}"
    );
    agent.ok(&["whoami"]); // the session itself is still valid
    agent2.ok(&["token"]); // the other agent is not affected
    let info: serde_json::Value =
        serde_json::from_str(&master.ok(&["agents", "resume", omni.as_str(), "--json"]))
            .expect("json");
    assert_eq!(info["status"], "active");
    jwt_payload(agent.ok(&["token"]).trim());

    // Sessions: the agent sees its one session; the master revokes another of its sessions.
    let list: serde_json::Value =
        serde_json::from_str(&agent.ok(&["sessions", "list", "--json"])).expect("json");
    assert_eq!(list["sessions"].as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list["sessions"][0]["kind"], "agent");
    assert_eq!(list["sessions"][0]["current"], true);
    let other = Cli::new(&broker.url);
    other.ok(&["login", "wallet", "--key-file", &master_key]);
    let list: serde_json::Value =
        serde_json::from_str(&master.ok(&["sessions", "list", "--json"])).expect("json");
    let sessions = list["sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 2, "{list}");
    let other_id = sessions
        .iter()
        .find(|s| s["current"] == false)
        .and_then(|s| s["id"].as_str())
        .expect("the other session")
        .to_owned();
    let text = master.ok(&["sessions", "list"]);
    assert!(text.starts_with("ID") && text.contains(&other_id), "{text}");
    let out = master.ok(&["sessions", "revoke", &other_id]);
    assert!(out.contains(&other_id), "{out}");
    let err = other.fails(&["whoami"], 3);
    assert!(err.contains("login wallet"), "{err}");
    master.fails(&["sessions", "revoke", "../x"], 1);
    master.fails(&["sessions", "revoke", &other_id], 1); // no longer live

    // A logged-out agent signs in again with its device key and keeps its identity.
    agent.ok(&["logout"]);
    agent.fails(&["token"], 3);
    let out = agent.ok(&["agent", "login", "--agent", omni.as_str()]);
    assert!(out.contains(omni.as_str()), "{out}");
    let claims = jwt_payload(agent.ok(&["token"]).trim());
    assert_eq!(claims["agentkeys_actor_omni"], omni.as_str(), "{claims}");
    assert_eq!(claims["sub"], format!("agentkeys:agent:{omni}"));
    // And again, from the saved (now live) session's agent, without naming it.
    agent.ok(&["agent", "login"]);

    // Remove: the agent's session is dead at once (sign in required), and removal is final.
    let out = master.ok(&["agents", "remove", "bot"]);
    assert!(out.contains("Removed agent bot"), "{out}");
    let err = agent.fails(&["token"], 3);
    assert!(err.contains("agent pair"), "{err}");
    let err = master.fails(&["agents", "resume", "bot"], 1);
    assert!(err.contains("removed"), "{err}");
    let list: serde_json::Value =
        serde_json::from_str(&master.ok(&["agents", "list", "--json"])).expect("json");
    assert_eq!(list["agents"][0]["status"], "removed", "{list}");

    // logout --all ends every session of the master, here and elsewhere.
    other.ok(&["login", "wallet", "--key-file", &master_key]);
    let master_session = master.config_dir().join("profiles/default/session.json");
    let out = master.ok(&["logout", "--all"]);
    assert!(out.contains("Ended every session"), "{out}");
    assert!(
        out.contains("Linked email and OIDC identities stay linked"),
        "logout --all says the links stay: {out}"
    );
    assert!(!master_session.exists());
    other.fails(&["whoami"], 3);
    master.fails(&["agents", "list"], 3);
    // The agents' sessions are their own: bot-2 still works.
    agent2.ok(&["token"]);

    let logs = broker.logs();
    assert!(
        !logs.contains(&agent_token),
        "agent session token in broker logs"
    );
    assert!(!logs.contains(&jwt), "JWT in broker logs");
}

#[test]
fn agent_pair_needs_a_device_key_and_times_out() {
    let broker = Broker::start();
    let (master, _, _) = signed_in_master(&broker);
    let agent = Cli::new(&broker.url);

    let err = agent.fails(&["agent", "pair"], 1);
    assert!(err.contains("agentkeys agent init"), "{err}");

    // A custom key file; a master's profile is not overwritten by pairing.
    let key = agent.home.path().join("dev.key");
    let key_s = key.to_str().expect("utf-8 path");
    agent.ok(&["agent", "init", "--key-file", key_s]);
    master.ok(&["agent", "init"]);
    let err = master.fails(&["agent", "pair"], 1);
    assert!(err.contains("holds a master's session"), "{err}");

    let started = Instant::now();
    let out = agent.run(&["agent", "pair", "--key-file", key_s, "--timeout", "2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty());
    assert!(
        stderr.contains("Pairing code: ") && stderr.contains("not approved within 2 s"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    agent.fails(&["token"], 3); // nothing saved
}

// ---- email sign-in and identity linking ------------------------------------------------------

/// The venv's python with aiosmtpd, at the pinned versions of the broker's own SMTP tests (the
/// same venv directory and stamp, so the two test suites share one install).
fn smtp_python() -> PathBuf {
    static PYTHON: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("smtp-venv");
            let python = dir.join("bin/python");
            let stamp = dir.join(".requirements");
            let wanted = include_str!("../../agentkeys-broker/tests/broker/smtp-requirements.txt");
            if fs::read_to_string(&stamp).ok().as_deref() != Some(wanted) {
                let _ = fs::remove_dir_all(&dir);
                let ok = Command::new("python3")
                    .args(["-m", "venv"])
                    .arg(&dir)
                    .status();
                assert!(
                    ok.is_ok_and(|s| s.success()),
                    "python3 -m venv failed: install python3-venv"
                );
                let req = dir.join("requirements.txt");
                fs::write(&req, wanted).expect("write requirements");
                let ok = Command::new(&python)
                    .args([
                        "-m",
                        "pip",
                        "install",
                        "--quiet",
                        "--disable-pip-version-check",
                        "-r",
                    ])
                    .arg(&req)
                    .status();
                assert!(
                    ok.is_ok_and(|s| s.success()),
                    "pip install of aiosmtpd failed (PyPI reachable?)"
                );
                fs::write(&stamp, wanted).expect("write stamp");
            }
            python
        })
        .clone()
}

/// A real SMTP server writing every message into a maildir; killed when dropped.
struct SmtpSink {
    child: Child,
    port: u16,
    maildir: tempfile::TempDir,
    seen: std::collections::HashSet<PathBuf>,
}

impl SmtpSink {
    fn start() -> Self {
        let maildir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let child = Command::new(smtp_python())
            .args([
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &format!("127.0.0.1:{port}"),
                "-c",
                "aiosmtpd.handlers.Mailbox",
            ])
            .arg(maildir.path().join("mail"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start aiosmtpd");
        let mut sink = SmtpSink {
            child,
            port,
            maildir,
            seen: Default::default(),
        };
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = sink.child.try_wait() {
                panic!("aiosmtpd exited during start-up ({status})");
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "aiosmtpd did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        sink
    }

    /// The broker's environment for delivering to this sink.
    fn broker_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("BROKER_SMTP_HOST", "127.0.0.1".to_owned()),
            ("BROKER_SMTP_PORT", self.port.to_string()),
            ("BROKER_SMTP_TLS", "none".to_owned()),
        ]
    }

    /// Waits for a message not returned before; returns it raw.
    fn next_message(&mut self) -> String {
        let dir = self.maildir.path().join("mail/new");
        let started = Instant::now();
        loop {
            let fresh = fs::read_dir(&dir)
                .map(|d| {
                    d.flatten()
                        .map(|e| e.path())
                        .find(|p| !self.seen.contains(p))
                })
                .unwrap_or_default();
            if let Some(path) = fresh {
                let text = fs::read_to_string(&path).expect("read mail");
                self.seen.insert(path);
                return text;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "no new mail arrived"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A message's text with its quoted-printable transfer encoding undone (long lines such as the
/// link are wrapped, and `=` is escaped).
fn quoted_printable_decoded(message: &str) -> String {
    let joined = message.replace("=\r\n", "").replace("=\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'='
            && i + 2 < bytes.len()
            && let Some(b) = joined
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The token in a message's landing-page link.
fn link_token(message: &str, broker_url: &str) -> String {
    let message = quoted_printable_decoded(message);
    let prefix = format!("{broker_url}/auth/email/landing#token=");
    let start = message
        .find(&prefix)
        .unwrap_or_else(|| panic!("no landing link in the mail:\n{message}"))
        + prefix.len();
    message[start..start + 43].to_owned()
}

/// The one-time code in a message (`… code: ABCD-EFGH`).
fn mailed_code(message: &str) -> String {
    let message = quoted_printable_decoded(message);
    let at = message
        .find("code: ")
        .unwrap_or_else(|| panic!("no code in the mail:\n{message}"))
        + "code: ".len();
    message[at..at + 9].to_owned()
}

/// Runs `args` as a child, waits for its stderr line starting with `prefix`, types the code of
/// the next mail at its prompt, and returns the exit status, stdout and stderr.
fn complete_by_mail(
    cli: &Cli,
    smtp: &mut SmtpSink,
    args: &[&str],
    prefix: &str,
    expect_in_mail: &str,
) -> (std::process::ExitStatus, String, String) {
    let mut running = cli.spawn(args);
    let (_, stderr) = running.stderr_line(prefix);
    let mail = smtp.next_message();
    assert!(mail.contains(expect_in_mail), "{expect_in_mail}: {mail}");
    running.type_line(&mailed_code(&mail));
    let (status, stdout) = running.finish(Duration::from_secs(30));
    (status, stdout, stderr.join().expect("stderr thread"))
}

#[test]
fn email_sign_in_and_identity_linking() {
    let mut smtp = SmtpSink::start();
    let broker = Broker::start_with_env(&[], &smtp.broker_env());

    // An address of its own: a master without a wallet.
    let alice = Cli::new(&broker.url);
    let (status, stdout, stderr) = complete_by_mail(
        &alice,
        &mut smtp,
        &["login", "email", " Alice@Example.COM", "--timeout", "60"],
        "A sign-in code was sent to alice@example.com.",
        "To: alice@example.com",
    );
    assert!(
        status.success(),
        "login email failed ({status}):\n{stdout}\n{stderr}"
    );
    let alice_omni = OmniAccount::derive("email", "alice@example.com");
    assert!(
        stdout.contains(alice_omni.as_str()) && stdout.contains("wallet:       (none)"),
        "{stdout}"
    );
    let profile_dir = alice.config_dir().join("profiles/default");
    let session_file = profile_dir.join("session.json");
    #[cfg(unix)]
    assert_eq!(mode(&session_file), 0o600);
    assert!(
        !profile_dir.join("pending-login.json").exists(),
        "the finished request is forgotten"
    );
    let alice_token = serde_json::from_str::<serde_json::Value>(
        &fs::read_to_string(&session_file).expect("read session"),
    )
    .expect("json")["session_token"]
        .as_str()
        .expect("token saved")
        .to_owned();
    assert!(!stdout.contains(&alice_token) && !stderr.contains(&alice_token));
    let me: serde_json::Value =
        serde_json::from_str(&alice.ok(&["whoami", "--json"])).expect("json");
    assert_eq!(me["kind"], "master");
    assert_eq!(me["omni_account"], alice_omni.as_str());
    assert!(me["wallet"].is_null(), "{me}");
    let claims = jwt_payload(alice.ok(&["token"]).trim());
    assert_eq!(
        claims["agentkeys_actor_omni"],
        alice_omni.as_str(),
        "{claims}"
    );

    // Only wallet masters link identities, with their wallet's key: refused before any mail.
    let (_stray, stray_key, _) = signed_in_master(&broker);
    let err = alice.fails(
        &[
            "identities",
            "link-email",
            "x@example.com",
            "--key-file",
            &stray_key,
        ],
        1,
    );
    assert!(
        err.contains("only a master signed in with a wallet"),
        "{err}"
    );
    let out = alice.ok(&["identities", "list"]);
    assert!(out.starts_with("No linked identities"), "{out}");

    // A wallet master links bob@example.com: a fresh signature, then the code from the mail.
    let (master, master_key, master_omni) = signed_in_master(&broker);
    let master_wallet = master
        .ok(&["key", "address", "--key-file", &master_key])
        .trim()
        .to_owned();
    // Another wallet's key is refused before anything is signed.
    let err = master.fails(
        &[
            "identities",
            "link-email",
            "bob@example.com",
            "--key-file",
            &stray_key,
        ],
        1,
    );
    assert!(
        err.contains("pass the signed-in wallet's key file"),
        "{err}"
    );
    let (status, stdout, stderr) = complete_by_mail(
        &master,
        &mut smtp,
        &[
            "identities",
            "link-email",
            "bob@example.com",
            "--key-file",
            &master_key,
            "--timeout",
            "60",
        ],
        "A link code was sent to bob@example.com.",
        "Link this address to the AgentKeys account",
    );
    assert!(
        status.success(),
        "link-email failed ({status}):\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("Linked email bob@example.com") && stdout.contains(master_omni.as_str()),
        "{stdout}"
    );
    let list: serde_json::Value =
        serde_json::from_str(&master.ok(&["identities", "list", "--json"])).expect("json");
    assert_eq!(list["identities"][0]["identity_type"], "email", "{list}");
    assert_eq!(
        list["identities"][0]["identity_value"], "bob@example.com",
        "{list}"
    );
    let text = master.ok(&["identities", "list"]);
    assert!(
        text.starts_with("TYPE") && text.contains("bob@example.com"),
        "{text}"
    );

    // Signing in as bob@example.com, in another profile, gives the wallet master's session.
    let (status, stdout, stderr) = complete_by_mail(
        &alice,
        &mut smtp,
        &[
            "--profile",
            "bob",
            "login",
            "email",
            "bob@example.com",
            "--json",
        ],
        "A sign-in code was sent to bob@example.com.",
        "To: bob@example.com",
    );
    assert!(
        status.success(),
        "login email bob failed ({status}):\n{stdout}\n{stderr}"
    );
    let signed_in: serde_json::Value = serde_json::from_str(&stdout).expect("--json");
    assert_eq!(
        signed_in["omni_account"],
        master_omni.as_str(),
        "{signed_in}"
    );
    assert_eq!(signed_in["wallet"], master_wallet.as_str(), "{signed_in}");
    assert_eq!(signed_in["email"], "bob@example.com", "{signed_in}");
    assert_eq!(signed_in["profile"], "bob", "{signed_in}");
    assert!(signed_in.get("session_token").is_none(), "{signed_in}");
    let me: serde_json::Value =
        serde_json::from_str(&alice.ok(&["--profile", "bob", "whoami", "--json"])).expect("json");
    assert_eq!(me["omni_account"], master_omni.as_str(), "{me}");
    assert_eq!(me["wallet"], master_wallet.as_str(), "{me}");
    // The default profile still holds alice.
    let me: serde_json::Value =
        serde_json::from_str(&alice.ok(&["whoami", "--json"])).expect("json");
    assert_eq!(me["omni_account"], alice_omni.as_str());

    // Unlink (typed in any case): the session obtained through bob@example.com is revoked, the
    // wallet's own is not; a second unlink is the broker's 404.
    let out = master.ok(&["identities", "unlink", "email", "Bob@Example.com"]);
    assert!(
        out.contains("Unlinked email bob@example.com") && out.contains("now revoked: 1."),
        "{out}"
    );
    alice.fails(&["--profile", "bob", "whoami"], 3);
    master.ok(&["whoami"]);
    let out = master.ok(&["identities", "list"]);
    assert!(out.starts_with("No linked identities"), "{out}");
    let err = master.fails(&["identities", "unlink", "email", "bob@example.com"], 1);
    assert!(err.contains("404"), "{err}");
    master.fails(&["identities", "unlink", "email", ".."], 1);

    // Nobody types the code: the command says how to finish later, and `--code` does.
    let carol = Cli::new(&broker.url);
    let out = carol.run(&["login", "email", "carol@example.com", "--timeout", "5"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty());
    assert!(
        stderr.contains("sign-in did not complete: no code was typed")
            && stderr.contains("agentkeys login email carol@example.com --code CODE"),
        "{stderr}"
    );
    carol.fails(&["whoami"], 3);
    let code = mailed_code(&smtp.next_message());
    let err = carol.fails(
        &["login", "email", "carol@example.com", "--code", "ZZZZ-ZZZZ"],
        1,
    );
    assert!(
        err.contains("wrong_code") && err.contains("tries left"),
        "{err}"
    );
    let err = carol.fails(&["login", "email", "dave@example.com", "--code", &code], 1);
    assert!(
        err.contains("no unfinished email sign-in for dave@example.com"),
        "{err}"
    );
    let out = carol.ok(&["login", "email", "carol@example.com", "--code", &code]);
    assert!(
        out.contains(OmniAccount::derive("email", "carol@example.com").as_str()),
        "{out}"
    );

    // Bad input is refused locally.
    let err = carol.fails(&["login", "email", "not-an-address"], 1);
    assert!(err.contains("name@example.com"), "{err}");
    let err = carol.fails(&["login", "oidc", "Bad_Name"], 1);
    assert!(err.contains("provider"), "{err}");

    let logs = broker.logs();
    assert!(!logs.contains(&alice_token), "session token in broker logs");
}

/// The attack, end to end: an attacker runs the real CLI's `login email` for the victim's
/// address. The victim gets the genuine mail and a real browser opens its link and clicks
/// everything the page offers. The victim's browser is signed in; the attacker's waiting CLI
/// gets nothing, and its guesses kill the request.
#[test]
fn a_phished_victim_clicking_everything_gives_the_attacker_nothing() {
    let mut smtp = SmtpSink::start();
    let broker = Broker::start_with_env(&[], &smtp.broker_env());
    let attacker = Cli::new(&broker.url);
    let mut running = attacker.spawn(&["login", "email", "victim@example.com", "--timeout", "120"]);
    let (_, stderr) = running.stderr_line("A sign-in code was sent to victim@example.com.");
    let mail = smtp.next_message();
    let link = format!(
        "{}/auth/email/landing#token={}",
        broker.url,
        link_token(&mail, &broker.url)
    );

    let report = oidc_op::click_everything(&link).expect("the browser ran");
    assert!(
        report["clicked"]
            .as_array()
            .is_some_and(|c| c.iter().any(|b| b == "Sign in this browser")),
        "{report}"
    );
    assert!(
        report["text"]
            .as_str()
            .is_some_and(|t| t.contains("This browser is signed in")),
        "{report}"
    );
    let cookie = &report["cookies"][0];
    assert_eq!(cookie["name"], "agentkeys_session", "{report}");
    assert_eq!(cookie["httpOnly"], true, "{report}");
    assert_eq!(cookie["sameSite"], "Strict", "{report}");

    // The attacker has only guesses; every one is refused and then the request is dead.
    running.type_line("ZZZZ-ZZZZ");
    let (status, stdout) = running.finish(Duration::from_secs(30));
    let stderr = stderr.join().expect("stderr");
    assert!(!status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("already completed"),
        "the victim's click completed the request: {stderr}"
    );
    attacker.fails(&["whoami"], 3);
}

#[test]
fn email_sign_in_without_smtp_is_explained() {
    let broker = Broker::start();
    let cli = Cli::new(&broker.url);
    let err = cli.fails(&["login", "email", "a@example.com"], 1);
    assert!(
        err.contains("503") && err.contains("BROKER_SMTP_HOST"),
        "{err}"
    );
    cli.fails(&["whoami"], 3);
}

// The real OpenID Provider the broker's tests use (npm oidc-provider), and the headless
// browser that plays a phished user.
#[path = "../../agentkeys-broker/tests/oidc_op/harness.rs"]
#[allow(dead_code)]
mod oidc_op;

fn broker_with_provider() -> Broker {
    let op = oidc_op::get();
    let dir = tempfile::tempdir().expect("tempdir");
    let providers = dir.path().join("providers.json");
    let config = serde_json::json!({"providers": [{
        "name": "corp", "issuer": op.rich,
        "client_id": oidc_op::CLIENT_ID, "client_secret": oidc_op::CLIENT_SECRET,
    }]});
    fs::write(&providers, config.to_string()).expect("write providers");
    let broker = Broker::start_with_env(
        &[],
        &[(
            "BROKER_OIDC_PROVIDERS_FILE",
            providers.display().to_string(),
        )],
    );
    // The broker read the file at start-up.
    drop(dir);
    broker
}

#[test]
fn oidc_sign_in_with_a_real_provider() {
    let broker = broker_with_provider();
    let rt = tokio::runtime::Runtime::new().expect("runtime");

    // Loopback redirect: the browser comes back to the CLI's own listener.
    let alice = Cli::new(&broker.url);
    let mut running = alice.spawn(&["login", "oidc", "corp", "--timeout", "60"]);
    // The CLI prints the authorization URL alone on a line; the test is the browser.
    let (rest, stderr) = running.stderr_line("http");
    let url = format!("http{rest}");
    let callback = rt
        .block_on(oidc_op::sign_in(&url, "alice"))
        .expect("provider login");
    // Following the broker's redirect lands on the CLI's loopback page.
    let page = rt.block_on(reqwest::get(callback)).expect("callback");
    assert_eq!(page.status(), 200);
    assert!(
        page.url().as_str().starts_with("http://127.0.0.1:"),
        "{}",
        page.url()
    );
    assert!(rt.block_on(page.text()).expect("page").contains("terminal"));
    let (status, stdout) = running.finish(Duration::from_secs(30));
    let stderr = stderr.join().expect("stderr");
    assert!(
        status.success(),
        "login oidc failed ({status}):\n{stdout}\n{stderr}"
    );
    let me: serde_json::Value =
        serde_json::from_str(&alice.ok(&["whoami", "--json"])).expect("json");
    assert_eq!(
        me["omni_account"],
        OmniAccount::derive("oauth2_corp", "alice").as_str()
    );
    assert!(me["wallet"].is_null(), "{me}");

    // --no-browser: the broker shows the code, the user types it.
    let paula = Cli::new(&broker.url);
    let mut running = paula.spawn(&["login", "oidc", "corp", "--no-browser", "--timeout", "60"]);
    let (rest, stderr) = running.stderr_line("http");
    let url = format!("http{rest}");
    let callback = rt
        .block_on(oidc_op::sign_in(&url, "paula"))
        .expect("provider login");
    let page = rt
        .block_on(async { reqwest::get(callback).await?.text().await })
        .expect("callback page");
    let at = page.find("id=\"code\">").expect("code on the page") + "id=\"code\">".len();
    running.type_line(&page[at..at + 9]);
    let (status, stdout) = running.finish(Duration::from_secs(30));
    let stderr = stderr.join().expect("stderr");
    assert!(
        status.success(),
        "--no-browser failed ({status}):\n{stdout}\n{stderr}"
    );
    let me: serde_json::Value =
        serde_json::from_str(&paula.ok(&["whoami", "--json"])).expect("json");
    assert_eq!(
        me["omni_account"],
        OmniAccount::derive("oauth2_corp", "paula").as_str()
    );
}

/// The OIDC attack, end to end: the attacker's real CLI starts a sign-in and the victim
/// finishes it at the provider. The broker sends the victim's browser (and the code) to
/// 127.0.0.1 on the victim's side, so the attacker's CLI, listening elsewhere, never gets it.
#[test]
fn a_victim_finishing_the_attackers_oidc_sign_in_hands_over_nothing() {
    let broker = broker_with_provider();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let attacker = Cli::new(&broker.url);
    let mut running = attacker.spawn(&["login", "oidc", "corp", "--timeout", "5"]);
    let (rest, stderr) = running.stderr_line("http");
    let url = format!("http{rest}");
    let callback = rt
        .block_on(oidc_op::sign_in(&url, "victim"))
        .expect("provider login");
    // The victim's browser is redirected to a loopback address on the victim's machine; in
    // this test both sides share one machine, so the victim's browser is played by a client
    // that does not follow the redirect (the attacker is not listening on the victim's host).
    let no_follow = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let r = rt
        .block_on(no_follow.get(callback).send())
        .expect("callback");
    assert_eq!(r.status(), 303);
    let (status, stdout) = running.finish(Duration::from_secs(30));
    let stderr = stderr.join().expect("stderr");
    assert!(!status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("did not come back"), "{stderr}");
    attacker.fails(&["whoami"], 3);
}

#[test]
fn an_agent_asks_for_access_and_its_master_approves_or_denies() {
    let broker = Broker::start();
    let (master, master_key, _) = signed_in_master(&broker);
    let master_wallet = master
        .ok(&["key", "address", "--key-file", &master_key])
        .trim()
        .to_lowercase();
    let agent = paired_agent(&broker, &master, "bot1");

    // The agent asks and waits; the master sees the terms and approves with its wallet.
    let mut running = agent.spawn(&[
        "grants",
        "request",
        "--scope",
        "inbox/",
        "--uses",
        "2",
        "--ttl",
        "1h",
        "--reason",
        "read today's invoices",
    ]);
    let (id, stderr) = running.stderr_line("Access request: ");
    let listed = master.ok(&["requests", "list"]);
    for want in [
        id.as_str(),
        "bot1",
        "inbox/",
        "2 uses",
        "1h",
        "read today's invoices",
    ] {
        assert!(listed.contains(want), "{want}: {listed}");
    }
    let shown = master.ok(&["requests", "show", &id]);
    assert!(
        shown.contains(&format!("(tag {master_wallet}/inbox)")) && shown.contains("worst case:"),
        "{shown}"
    );
    let err = master.fails(&["requests", "approve", &id], 1);
    assert!(err.contains("--key-file"), "{err}");
    let text = master.ok(&["requests", "approve", &id, "--key-file", &master_key]);
    assert!(text.contains("grant_id:"), "{text}");

    let (status, stdout) = running.finish(Duration::from_secs(30));
    let stderr = stderr.join().expect("stderr thread");
    assert!(
        status.success(),
        "grants request failed:\n{stdout}\n{stderr}"
    );
    let grant = stdout
        .lines()
        .find_map(|l| l.strip_prefix("grant_id:"))
        .unwrap_or_else(|| panic!("no grant_id in {stdout}"))
        .trim()
        .to_owned();
    let claims = jwt_payload(agent.ok(&["token", "--grant", &grant]).trim());
    assert_eq!(claims["agentkeys_scope"], format!("{master_wallet}/inbox"));

    // Asked without waiting, denied, then checked: the agent is told, with a failing status.
    let asked: serde_json::Value = serde_json::from_str(&agent.ok(&[
        "grants",
        "request",
        "--scope",
        "outbox/",
        "--ttl",
        "10m",
        "--reason",
        "send",
        "--no-wait",
        "--json",
    ]))
    .expect("json");
    assert_eq!(asked["status"], "pending", "{asked}");
    let id = asked["request_id"].as_str().expect("request_id");
    assert!(
        master
            .ok(&["requests", "deny", id])
            .starts_with("Denied request")
    );
    let err = agent.fails(&["requests", "show", id, "--wait"], 1);
    assert!(err.contains("denied"), "{err}");
    let all = master.ok(&["requests", "list", "--all"]);
    assert!(all.contains("approved") && all.contains("denied"), "{all}");
    assert!(
        master
            .ok(&["requests", "list"])
            .starts_with("No access requests are waiting")
    );
}

/// `agentkeys mcp` for an agent, past the handshake, spoken to as an MCP client does
/// (newline-delimited JSON-RPC on stdio). Its storage is a port where nothing listens, so a
/// storage call that was sent comes back as "could not reach the storage service".
struct Mcp {
    server: Running,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    next_id: u32,
}

impl Mcp {
    fn start(agent: &Cli, sts: &FakeSts) -> Self {
        let mut server = agent.spawn(&[
            "mcp",
            "--role-arn",
            "arn:aws:iam:::role/agentkeys-data",
            "--sts-endpoint",
            &sts.url,
            "--region",
            "eu-west-1",
            "--bucket",
            "bkt",
            "--s3-endpoint",
            "http://127.0.0.1:9",
        ]);
        let stdout = std::io::BufReader::new(
            server
                .child
                .as_mut()
                .and_then(|c| c.stdout.take())
                .expect("stdout piped"),
        );
        let mut mcp = Mcp {
            server,
            stdout,
            next_id: 1,
        };
        let init = mcp.request(
            "initialize",
            serde_json::json!({"protocolVersion": "2024-11-05", "capabilities": {},
                               "clientInfo": {"name": "cli_e2e", "version": "0"}}),
        );
        assert!(init["result"]["serverInfo"].is_object(), "{init}");
        mcp.server
            .type_line(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        mcp
    }

    fn request(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        use std::io::BufRead;
        let id = self.next_id;
        self.next_id += 1;
        self.server.type_line(
            &serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
                .to_string(),
        );
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read the server");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }

    /// Calls `tool`; returns whether it reported an error, and its text.
    fn call(&mut self, tool: &str, arguments: serde_json::Value) -> (bool, String) {
        let answer = self.request(
            "tools/call",
            serde_json::json!({"name": tool, "arguments": arguments}),
        );
        let text = answer["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or_else(|| panic!("no text content: {answer}"))
            .to_owned();
        (answer["result"]["isError"] == true, text)
    }
}

/// An agent's `request_access` over MCP files an access request its master sees, and a bad ttl
/// is refused before any call.
#[test]
fn mcp_request_access_files_a_request_the_master_sees() {
    let broker = Broker::start();
    let (master, _, _) = signed_in_master(&broker);
    let agent = paired_agent(&broker, &master, "bot1");

    // The server mints and trades the token for credentials once, before the handshake.
    let sts = FakeSts::start(1);
    let mut mcp = Mcp::start(&agent, &sts);

    let (failed, text) = mcp.call(
        "request_access",
        serde_json::json!({"scope": "inbox/", "ttl": "soon", "reason": "x"}),
    );
    assert!(failed && text.contains("nothing was sent"), "{text}");

    let (failed, text) = mcp.call(
        "request_access",
        serde_json::json!({"scope": "inbox/", "ttl": "1h", "uses": 2,
                           "reason": "read today's invoices"}),
    );
    assert!(!failed, "{text}");
    let info: serde_json::Value = serde_json::from_str(&text).expect("the request as JSON");
    assert_eq!(info["status"], "pending", "{info}");
    assert_eq!(info["ttl_seconds"], 3600, "{info}");
    let id = info["request_id"].as_str().expect("request_id");
    drop(mcp);
    assert_eq!(sts.bodies().len(), 1);

    // The master sees it, with its terms, like one filed by `agentkeys grants request`.
    let listed = master.ok(&["requests", "list"]);
    for want in [id, "bot1", "inbox/", "2 uses", "read today's invoices"] {
        assert!(listed.contains(want), "{want}: {listed}");
    }
}

/// Every storage tool checks the key or prefix it is given before any call to storage, and
/// sends a good one as the full key under the agent's own prefix (or the prefix named).
#[test]
fn mcp_storage_tools_check_keys_before_any_call() {
    let broker = Broker::start();
    let (master, _, _) = signed_in_master(&broker);
    let agent = paired_agent(&broker, &master, "bot1");
    let sts = FakeSts::start(1);
    let mut mcp = Mcp::start(&agent, &sts);

    for (tool, arguments, says) in [
        (
            "storage_get",
            serde_json::json!({"key": "../0xdef/seed.txt"}),
            "'..' path segments are not allowed",
        ),
        (
            "storage_put",
            serde_json::json!({"key": "/0xdef/evil.txt", "content": "x"}),
            "absolute keys are not allowed",
        ),
        (
            "storage_delete",
            serde_json::json!({"prefix": "0xdef/../0xabc/", "key": "a.txt"}),
            "prefix \"0xdef/../0xabc/\" refused before any call",
        ),
        (
            "storage_list",
            serde_json::json!({"prefix": "0xdef"}),
            "must name a folder ending in '/'",
        ),
    ] {
        let (failed, text) = mcp.call(tool, arguments.clone());
        assert!(failed && text.contains(says), "{tool} {arguments}: {text}");
    }

    let (_, who) = mcp.call("whoami", serde_json::json!({}));
    let who: serde_json::Value = serde_json::from_str(&who).expect("whoami as JSON");
    let own = who["own_prefix"].as_str().expect("own_prefix");
    for (tool, arguments, sent) in [
        (
            "storage_get",
            serde_json::json!({"key": "notes/a.txt"}),
            format!("read s3://bkt/{own}notes/a.txt"),
        ),
        (
            "storage_put",
            serde_json::json!({"prefix": "0xdef/inbox/", "key": "a.txt", "content": "x"}),
            "write s3://bkt/0xdef/inbox/a.txt".to_owned(),
        ),
        (
            "storage_delete",
            serde_json::json!({"key": "a.txt"}),
            format!("delete s3://bkt/{own}a.txt"),
        ),
        (
            "storage_list",
            serde_json::json!({"prefix": "0xdef/inbox/"}),
            "list s3://bkt/0xdef/inbox/".to_owned(),
        ),
    ] {
        let (failed, text) = mcp.call(tool, arguments.clone());
        assert!(
            failed && text.contains(&format!("could not reach the storage service to {sent} ")),
            "{tool} {arguments}: {text}"
        );
    }
    drop(mcp);
    assert_eq!(sts.bodies().len(), 1);
}

#[test]
fn grants_create_use_exhaust_and_revoke() {
    let broker = Broker::start();
    let (master, master_key, _) = signed_in_master(&broker);
    let master_wallet = master
        .ok(&["key", "address", "--key-file", &master_key])
        .trim()
        .to_lowercase();
    let agent = paired_agent(&broker, &master, "bot1");

    // Create (by label), one use: the id, the scope tag and the exposure sentence are printed.
    let text = master.ok(&[
        "grants",
        "create",
        "--agent",
        "bot1",
        "--scope",
        "inbox/",
        "--expires-in",
        "1h",
        "--max-uses",
        "1",
    ]);
    let tag = format!("{master_wallet}/inbox");
    assert!(
        text.contains(&format!("agentkeys_scope={tag}")) && text.contains("worst case:"),
        "{text}"
    );
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("grant_id:"))
        .expect("grant_id line")
        .trim()
        .to_owned();
    // Both sides list it; a bad expiry is refused before the broker is asked.
    let list: serde_json::Value =
        serde_json::from_str(&master.ok(&["grants", "list", "--json"])).expect("json");
    assert_eq!(list["grants"][0]["grant_id"], id.as_str(), "{list}");
    assert_eq!(list["grants"][0]["scope_tag"], tag.as_str(), "{list}");
    let text = agent.ok(&["grants", "list"]);
    assert!(text.contains(&id) && text.contains("active"), "{text}");
    let err = master.fails(
        &[
            "grants",
            "create",
            "--agent",
            "bot1",
            "--scope",
            "x/",
            "--expires-in",
            "1y",
        ],
        1,
    );
    assert!(err.contains("--expires-in"), "{err}");
    let err = master.fails(
        &[
            "grants",
            "create",
            "--agent",
            "nobody",
            "--scope",
            "x/",
            "--expires-in",
            "1h",
        ],
        1,
    );
    assert!(err.contains("no agent labelled nobody"), "{err}");

    // The agent's token under the grant carries the scope tag (also as a session tag); its own
    // token does not.
    let claims = jwt_payload(agent.ok(&["token", "--grant", &id]).trim());
    assert_eq!(claims["agentkeys_scope"], tag.as_str(), "{claims}");
    assert_eq!(
        claims["https://aws.amazon.com/tags"]["principal_tags"]["agentkeys_scope"][0],
        tag.as_str(),
        "{claims}"
    );
    let own = jwt_payload(agent.ok(&["token"]).trim());
    assert!(own.get("agentkeys_scope").is_none(), "{own}");

    // The one use is spent: a clear refusal. The master cannot use it either.
    let err = agent.fails(&["token", "--grant", &id], 1);
    assert!(
        err.contains("403 grant_exhausted") && err.contains("agentkeys grants create"),
        "{err}"
    );
    let err = master.fails(&["token", "--grant", &id], 1);
    assert!(err.contains("403 grant_not_yours"), "{err}");
    let err = agent.fails(&["token", "--grant", "ffff"], 1);
    assert!(err.contains("403 grant_unknown"), "{err}");
    let text = master.ok(&["grants", "list"]);
    assert!(text.contains("used up") && text.contains("1/1"), "{text}");

    // Revoke an unlimited grant: the next mint under it is refused; revoking again is a 404.
    let g: serde_json::Value = serde_json::from_str(&master.ok(&[
        "grants",
        "create",
        "--agent",
        "bot1",
        "--scope",
        "projects/q3",
        "--expires-in",
        "2d",
        "--json",
    ]))
    .expect("json");
    let id2 = g["grant_id"].as_str().expect("id").to_owned();
    assert!(g["max_uses"].is_null(), "{g}");
    jwt_payload(agent.ok(&["token", "--grant", &id2]).trim());
    let out = master.ok(&["grants", "revoke", &id2]);
    assert!(out.contains(&format!("Revoked grant {id2}")), "{out}");
    let err = agent.fails(&["token", "--grant", &id2], 1);
    assert!(err.contains("403 grant_revoked"), "{err}");
    let err = master.fails(&["grants", "revoke", &id2], 1);
    assert!(err.contains("404"), "{err}");
    master.fails(&["grants", "revoke", "../x"], 1);
    let err = agent.fails(&["grants", "revoke", &id], 1);
    assert!(err.contains("403"), "{err}");
    let text = master.ok(&["grants", "list"]);
    assert!(text.contains("revoked"), "{text}");
}

/// SPEC §11.4 over a full run: every secret the run handled (wallet and device keys, session
/// tokens, JWTs, an emailed link token, the broker's signing key) is looked for in the broker's
/// log and in the bytes of its database; none may appear.
#[test]
fn no_secret_reaches_the_log_or_the_store() {
    let mut smtp = SmtpSink::start();
    let broker = Broker::start_with_env(&["--log-format", "json"], &smtp.broker_env());
    let mut secrets: Vec<(&str, Vec<u8>)> = Vec::new();
    let session_token = |cli: &Cli| {
        let path = cli.config_dir().join("profiles/default/session.json");
        let saved: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(path).expect("session file")).expect("json");
        saved["session_token"].as_str().expect("token").to_owned()
    };

    // A wallet master, its key, its session and a token.
    let (master, key_file, _) = signed_in_master(&broker);
    let key = fs::read_to_string(&key_file)
        .expect("key")
        .trim()
        .to_owned();
    secrets.push((
        "wallet key",
        key.trim_start_matches("0x").as_bytes().to_vec(),
    ));
    secrets.push(("master session", session_token(&master).into_bytes()));
    secrets.push((
        "master JWT",
        master.ok(&["token"]).trim().as_bytes().to_vec(),
    ));

    // An email sign-in: the link's token, the code, the CLI's request id and verifier, and
    // the session.
    let alice = Cli::new(&broker.url);
    let mut running = alice.spawn(&["login", "email", "alice@example.com", "--timeout", "60"]);
    let (_, stderr) = running.stderr_line("A sign-in code was sent");
    let mail = smtp.next_message();
    secrets.push((
        "email link token",
        link_token(&mail, &broker.url).into_bytes(),
    ));
    let code = mailed_code(&mail);
    secrets.push(("email code", code.clone().into_bytes()));
    secrets.push(("email code (canonical)", code.replace('-', "").into_bytes()));
    let pending: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(
            alice
                .config_dir()
                .join("profiles/default/pending-login.json"),
        )
        .expect("pending sign-in"),
    )
    .expect("json");
    for field in ["request_id", "code_verifier"] {
        let value = pending[field].as_str().expect("kept").to_owned();
        secrets.push((field, value.into_bytes()));
    }
    running.type_line(&code);
    let (status, _) = running.finish(Duration::from_secs(30));
    let _ = stderr.join();
    assert!(status.success());
    secrets.push(("email session", session_token(&alice).into_bytes()));

    // An agent: its device key, its session and a token.
    let agent = paired_agent(&broker, &master, "bot");
    let device = fs::read_to_string(agent.config_dir().join("profiles/default/device.key"))
        .expect("device key");
    secrets.push((
        "device key",
        device.trim().trim_start_matches("0x").as_bytes().to_vec(),
    ));
    secrets.push(("agent session", session_token(&agent).into_bytes()));
    secrets.push(("agent JWT", agent.ok(&["token"]).trim().as_bytes().to_vec()));

    // The broker's signing key, as raw DER and as text encodings of it.
    let keys_dir = broker._data.path().join("data/keys");
    for entry in fs::read_dir(&keys_dir).expect("keys dir") {
        let der = fs::read(entry.expect("entry").path()).expect("key file");
        secrets.push(("signing key (hex)", hex::encode(&der).into_bytes()));
        secrets.push((
            "signing key (base64)",
            base64::engine::general_purpose::STANDARD
                .encode(&der)
                .into_bytes(),
        ));
        secrets.push(("signing key (DER)", der));
    }

    // Where the broker writes: its log, and every file of its database.
    let mut places: Vec<(String, Vec<u8>)> =
        vec![("broker log".into(), broker.logs().into_bytes())];
    for entry in fs::read_dir(broker._data.path().join("data")).expect("data dir") {
        let path = entry.expect("entry").path();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("broker.db"))
        {
            places.push((
                path.display().to_string(),
                fs::read(&path).expect("db file"),
            ));
        }
    }
    assert!(places.len() >= 2, "the database was found");
    // Control: what the broker does store (the master's wallet) is found by the same search.
    let wallet = master
        .ok(&["key", "address", "--key-file", &key_file])
        .trim()
        .to_lowercase();
    let stored = places[1..]
        .iter()
        .any(|(_, b)| b.windows(wallet.len()).any(|w| w == wallet.as_bytes()));
    assert!(stored, "the scan sees the database's contents");
    for (what, secret) in &secrets {
        // Long enough that a chance match in the scanned bytes is out of the question (the
        // shortest are the 8-character email codes).
        assert!(secret.len() >= 8, "{what} is a real secret");
        for (place, bytes) in &places {
            let found = bytes.windows(secret.len()).any(|w| w == secret.as_slice());
            assert!(!found, "{what} appears in {place}");
        }
    }
}

#[test]
fn a_master_reads_its_audit_trail() {
    let broker = Broker::start();
    let (master, _, master_omni) = signed_in_master(&broker);
    for _ in 0..3 {
        master.ok(&["token"]);
    }
    let agent = paired_agent(&broker, &master, "bot");
    agent.ok(&["token"]);

    let lines: Vec<serde_json::Value> = master
        .ok(&["audit", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).expect("NDJSON"))
        .collect();
    let kinds: Vec<&str> = lines.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "mint").count(),
        4,
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&"sign_in.wallet") && kinds.contains(&"agent.paired"),
        "{kinds:?}"
    );
    assert!(
        lines.iter().all(|e| e["actor"] == master_omni.as_str()
            || e["actor"] == OmniAccount::for_agent(&master_omni, "bot").as_str()),
        "only its own and its agent's events: {lines:?}"
    );
    let seqs: Vec<u64> = lines.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "oldest first: {seqs:?}"
    );

    // Filters: by kind, by agent label, and a limit.
    let mints = master.ok(&["audit", "--kind", "mint", "--agent", "bot", "--json"]);
    assert_eq!(mints.lines().count(), 1, "{mints}");
    assert_eq!(
        master
            .ok(&["audit", "--limit", "2", "--json"])
            .lines()
            .count(),
        2
    );
    let text = master.ok(&["audit"]);
    assert!(text.lines().count() >= lines.len(), "{text}");
    // An agent has no audit view of its own.
    agent.fails(&["audit"], 1);
}

#[path = "cli_e2e/relay.rs"]
mod relay;
