//! The data dir and the database files are the broker's alone (they hold emails, IP addresses,
//! PKCE verifiers and the signing keys): the real binary creates them 0700 / 0600 whatever the
//! umask, tightens database files left more open, and refuses to start on an open data dir.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn mode(p: &Path) -> u32 {
    fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// `agentkeys-broker ARGS` under umask 000, so nothing private comes from the umask; no
/// BROKER_* variable of the caller leaks in.
fn broker_with_open_umask(args: &[&str]) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("umask 000 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_agentkeys-broker"))
        .args(args);
    crate::app::without_broker_env(c)
}

/// A broker that is killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether `GET /healthz` answers 200 (the tests here are synchronous: one small runtime).
fn healthy(port: u16) -> bool {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return false;
    };
    rt.block_on(async {
        let Ok(client) = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
        else {
            return false;
        };
        client
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == reqwest::StatusCode::OK)
    })
}

fn serve_dev(data: &Path) -> Running {
    let port = crate::app::free_port();
    let listen = format!("127.0.0.1:{port}");
    let data_s = data.to_str().unwrap();
    let mut running = Running(
        broker_with_open_umask(&["serve", "--dev", "--listen", &listen, "--data-dir", data_s])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    while !healthy(port) {
        assert!(
            running.0.try_wait().unwrap().is_none(),
            "the broker exited during start-up"
        );
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "broker not healthy"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    running
}

#[test]
fn data_dir_and_database_files_are_private_whatever_the_umask() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let _broker = serve_dev(&data);
    assert_eq!(mode(&data), 0o700, "data dir");
    assert_eq!(mode(&data.join("keys")), 0o700, "key dir");
    for f in ["broker.db", "broker.db-wal", "broker.db-shm"] {
        assert_eq!(mode(&data.join(f)), 0o600, "{f}");
    }
    let key = fs::read_dir(data.join("keys"))
        .unwrap()
        .next()
        .expect("a dev key")
        .unwrap()
        .path();
    assert_eq!(mode(&key), 0o600, "{}", key.display());
}

#[test]
fn database_files_left_open_are_made_private() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    fs::create_dir(&data).unwrap();
    fs::set_permissions(&data, fs::Permissions::from_mode(0o700)).unwrap();
    // An empty file is an empty SQLite database; an empty WAL is no WAL.
    for f in ["broker.db", "broker.db-wal"] {
        fs::write(data.join(f), b"").unwrap();
        fs::set_permissions(data.join(f), fs::Permissions::from_mode(0o644)).unwrap();
    }
    let _broker = serve_dev(&data);
    for f in ["broker.db", "broker.db-wal", "broker.db-shm"] {
        assert_eq!(mode(&data.join(f)), 0o600, "{f}");
    }
}

#[test]
fn an_open_data_dir_stops_start_up_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    fs::create_dir(&data).unwrap();
    for open in [0o755, 0o750, 0o701] {
        fs::set_permissions(&data, fs::Permissions::from_mode(open)).unwrap();
        let data_s = data.to_str().unwrap();
        let mut child = Running(
            broker_with_open_umask(&[
                "serve",
                "--dev",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                data_s,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        );
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.0.try_wait().unwrap() {
                break status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the broker started on a data dir of mode {open:o}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stderr = String::new();
        child
            .0
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        assert_eq!(status.code(), Some(2), "{open:o}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
        for word in [
            "--data-dir",
            "BROKER_DATA_DIR",
            data_s,
            &format!("mode {open:o}"),
            &format!("chmod 700 {data_s}"),
        ] {
            assert!(stderr.contains(word), "{stderr:?} lacks {word}");
        }
        assert_eq!(mode(&data), open, "left as it was");
        assert!(!data.join("broker.db").exists(), "nothing written into it");
    }
}
