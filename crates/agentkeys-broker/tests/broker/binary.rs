//! The real `agentkeys-broker` binary: start-up refusals and graceful shutdown.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::app::private_tempdir;

fn broker() -> Command {
    crate::app::broker_binary()
}

/// `serve --dev` on 127.0.0.1:`port` with its data in `data` (not yet spawned).
fn serve_dev(port: u16, data: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = broker();
    c.args([
        "serve",
        "--dev",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
    ])
    .arg(data);
    c
}

/// Runs to completion and returns (exit code, stderr).
fn run(c: &mut Command) -> (i32, String) {
    let out = c.stdout(Stdio::null()).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_settings_stop_start_up_with_one_line_naming_setting_value_and_fix() {
    let dir = private_tempdir();
    // (flags, environment, words the one-line message must contain)
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a [&'a str]);
    let cases: Vec<Case> = vec![
        (
            vec!["--listen", "nowhere"],
            vec![],
            &["--listen", "BROKER_LISTEN", "\"nowhere\"", "IP:PORT"],
        ),
        (
            vec![],
            vec![("BROKER_LISTEN", "1.2.3.4")],
            &["--listen", "BROKER_LISTEN", "\"1.2.3.4\""],
        ),
        (
            vec!["--oidc-jwt-ttl-seconds", "7200"],
            vec![],
            &["BROKER_OIDC_JWT_TTL_SECONDS", "\"7200\"", "60 to 3600"],
        ),
        (
            vec![],
            vec![("BROKER_MINT_RATE_PER_MINUTE", "0")],
            &["--mint-rate-per-minute", "\"0\""],
        ),
        (
            vec!["--log-format", "xml"],
            vec![],
            &["--log-format", "\"xml\"", "text, json"],
        ),
        (
            vec!["--issuer", "https://broker.example.com/"],
            vec![],
            &["BROKER_ISSUER", "trailing slash"],
        ),
        (
            vec!["--issuer", "http://broker.example.com"],
            vec![],
            &["BROKER_ISSUER", "https"],
        ),
        (
            vec!["--issuer", "ftp://x"],
            vec![],
            &["BROKER_ISSUER", "absolute URL"],
        ),
        (vec![], vec![], &["BROKER_ISSUER", "--dev"]),
        (
            vec!["--dev", "--database-url", "mysql://db/agentkeys"],
            vec![],
            &["BROKER_DATABASE_URL", "sqlite://", "postgres://"],
        ),
        (
            vec!["--dev"],
            vec![("BROKER_DATABASE_URL", "postgres://ak:s3cret@127.0.0.1:1/ak")],
            &["BROKER_KEY_ENCRYPTION_KEY_FILE", "openssl rand -base64 32"],
        ),
    ];
    for (args, env, expected) in cases {
        let mut c = broker();
        c.arg("serve")
            .arg("--data-dir")
            .arg(dir.path())
            .args(&args)
            .envs(env.iter().copied());
        let (code, stderr) = run(&mut c);
        assert_eq!(code, 2, "{args:?} {env:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
        assert!(
            !stderr.contains("s3cret"),
            "a database password is never echoed"
        );
        for word in expected {
            assert!(
                stderr.contains(word),
                "{args:?} {env:?}: {stderr:?} lacks {word}"
            );
        }
    }
}

#[test]
fn production_mode_refuses_to_start_without_a_key() {
    let dir = private_tempdir();
    let mut c = broker();
    c.args([
        "serve",
        "--issuer",
        "https://broker.example.com",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
    ])
    .arg(dir.path());
    let (code, stderr) = run(&mut c);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("agentkeys-broker keys generate"),
        "{stderr}"
    );

    // With a key it gets past that point (and is stopped by the test right after it listens).
    let (code, _) = run(broker()
        .args(["keys", "generate", "--data-dir"])
        .arg(dir.path()));
    assert_eq!(code, 0);
    let mut child = broker()
        .args([
            "serve",
            "--issuer",
            "https://broker.example.com",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the broker should be running"
    );
    child.kill().unwrap();
    let _ = child.wait();
}

#[test]
fn sigterm_drains_and_exits_cleanly() {
    let dir = private_tempdir();
    let port = crate::app::free_port();
    let mut child = serve_dev(port, dir.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "broker did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "broker ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut log = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(exit.success(), "{exit:?}: {log}");
    assert!(log.contains("broker.stopped"), "{log}");
}

#[test]
fn a_broker_that_cannot_listen_creates_no_database_and_no_key() {
    let dir = private_tempdir();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let data = dir.path().join("new");
    let (code, stderr) = run(broker()
        .args(["serve", "--dev", "--listen", &addr, "--data-dir"])
        .arg(&data));
    assert_ne!(code, 0);
    assert!(stderr.contains(&format!("binding {addr}")), "{stderr}");
    assert!(!data.exists(), "nothing written before the port was had");
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    // `policy aws | head -1`: the reader goes away after one line.
    let mut child = broker()
        .args([
            "policy",
            "aws",
            "--issuer",
            "https://broker.example.com",
            "--account",
            "123456789012",
            "--bucket",
            "agentkeys-data",
            "--role-name",
            "r",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "",
        "no broken-pipe message"
    );
}

#[test]
fn logs_written_to_a_file_carry_no_colour_codes() {
    let dir = private_tempdir();
    let log = dir.path().join("broker.log");
    let port = crate::app::free_port();
    let mut child = serve_dev(port, dir.path().join("data"))
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("broker.listening")
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "broker did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains('\u{1b}'), "{text:?}");
    assert!(text.contains("WARN") || text.contains("INFO"), "{text}");
}

#[test]
fn backup_writes_a_private_consistent_copy_whose_chain_verifies() {
    use std::os::unix::fs::PermissionsExt;
    let dir = private_tempdir();
    let (code, stderr) = run(broker()
        .args(["keys", "generate", "--data-dir"])
        .arg(dir.path()));
    assert_eq!(code, 0, "{stderr}");
    let out_dir = private_tempdir();
    let copy = out_dir.path().join("broker-copy.db");
    let backup = |to: &std::path::Path| {
        broker()
            .args(["backup", "--data-dir"])
            .arg(dir.path())
            .arg("--out")
            .arg(to)
            .output()
            .unwrap()
    };
    let made = backup(&copy);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    assert!(String::from_utf8_lossy(&made.stdout).contains("its audit chain verifies: 1 events"));
    let mode = std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // The copy is a store of its own: the key event is there.
    let (code, stderr) = run(broker()
        .args(["audit", "verify", "--data-dir"])
        .arg(out_dir.path())
        .arg("--database-url")
        .arg(format!("sqlite://{}", copy.display())));
    assert_eq!(code, 0, "{stderr}");
    // Never over an existing file, and PostgreSQL is pg_dump's job.
    assert!(!backup(&copy).status.success());
    let (code, stderr) = run(broker()
        .args([
            "backup",
            "--database-url",
            "postgres://ak:s3cret@127.0.0.1:1/ak",
        ])
        .args(["--key-encryption-key-file", "/nonexistent", "--out"])
        .arg(out_dir.path().join("pg.db")));
    assert_ne!(code, 0);
    assert!(
        stderr.contains("pg_dump") && !stderr.contains("s3cret"),
        "{stderr}"
    );
}

#[test]
fn audit_writes_are_counted_where_they_happen_every_kind_of_event() {
    let dir = private_tempdir();
    let port = crate::app::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut child = serve_dev(port, dir.path())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let curl = |args: &[&str]| -> String {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let started = Instant::now();
    while !curl(&[&format!("{url}/readyz")]).contains("ok") {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "broker not ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A wrong answer to a real challenge is an audited failed sign-in (the dev key's
    // generation was the first event).
    let challenge = curl(&[
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"address":"0x1111111111111111111111111111111111111111"}"#,
        &format!("{url}/v1/auth/wallet/challenge"),
    ]);
    let challenge: serde_json::Value = serde_json::from_str(&challenge).unwrap();
    let answer = serde_json::json!({
        "challenge_id": challenge["challenge_id"],
        "signature": format!("0x{}", "11".repeat(65)),
    });
    curl(&[
        "-H",
        "content-type: application/json",
        "-d",
        &answer.to_string(),
        &format!("{url}/v1/auth/wallet/verify"),
    ]);
    let metrics = curl(&[&format!("{url}/metrics")]);
    child.kill().unwrap();
    let _ = child.wait();
    let counted = metrics
        .lines()
        .find(|l| l.starts_with("agentkeys_audit_writes_total{outcome=\"ok\"}"))
        .and_then(|l| l.split_whitespace().last())
        .unwrap_or_else(|| panic!("no audit writes counter in {metrics}"))
        .to_owned();
    let verified = broker()
        .args(["audit", "verify", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(verified.status.success());
    let verified = String::from_utf8_lossy(&verified.stdout).into_owned();
    assert!(
        verified.contains(&format!("audit chain ok: {counted} events")),
        "counted {counted}, the chain says: {verified}"
    );
    assert_eq!(counted, "2", "the key's generation and the failed sign-in");
}
