//! `agentkeys exec`: run a command with the credentials in its environment.
//!
//! On Unix the client *replaces itself* with the command (`execvp`): the command keeps the
//! client's PID, so its exit status is the caller's exit status (a death by signal N shows as
//! 128+N in a shell), and SIGINT/SIGTERM sent to the client reach the command itself. Nothing
//! stays behind to forward or to leak.
//!
//! Building the environment ([`command`]) is separate from replacing the process ([`exec`]), so
//! both are tested without STS.

use std::ffi::{OsStr, OsString};
use std::process::Command;

use crate::aws::{self, AwsCredentials};
use crate::error::Error;

/// Inherited variables that would make an SDK in the child use other credentials or another
/// profile than the ones given. Every `AWS_CONTAINER_*` variable goes too.
pub const REMOVED_VARS: &[&str] = &[
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_SECURITY_TOKEN",
    "AWS_CREDENTIAL_EXPIRATION",
];
const REMOVED_PREFIX: &str = "AWS_CONTAINER_";

/// Which of the `inherited` variable names the child must not see.
pub fn vars_to_remove<I>(inherited: I) -> Vec<OsString>
where
    I: IntoIterator<Item = OsString>,
{
    inherited
        .into_iter()
        .filter(|k| {
            k.to_str()
                .is_some_and(|k| REMOVED_VARS.contains(&k) || k.starts_with(REMOVED_PREFIX))
        })
        .collect()
}

/// The command to run: `program args…` with the credentials, region and wallet set and the
/// conflicting inherited variables removed. Everything else is inherited.
pub fn command(
    program: &OsStr,
    args: &[OsString],
    creds: &AwsCredentials,
    region: &str,
    wallet: &str,
) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args);
    for k in vars_to_remove(std::env::vars_os().map(|(k, _)| k)) {
        cmd.env_remove(k);
    }
    for (k, v) in aws::env_vars(creds, region, wallet) {
        cmd.env(k, v);
    }
    cmd
}

/// Replaces this process with `cmd`. Returns only if that failed.
#[cfg(unix)]
pub fn exec(mut cmd: Command) -> Error {
    use std::os::unix::process::CommandExt;
    let program = cmd.get_program().to_string_lossy().into_owned();
    let source = cmd.exec();
    Error::Exec { program, source }
}

/// Runs `cmd` to completion and exits with its status (no `execvp` outside Unix).
#[cfg(not(unix))]
pub fn exec(mut cmd: Command) -> Error {
    let program = cmd.get_program().to_string_lossy().into_owned();
    match cmd.status() {
        Ok(status) => std::process::exit(exit_code_of(status)),
        Err(source) => Error::Exec { program, source },
    }
}

/// The exit code a shell reports for `status`: the code, or 128+N for a death by signal N.
pub fn exit_code_of(status: std::process::ExitStatus) -> i32 {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return 128 + sig;
        }
    }
    status.code().unwrap_or(1)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use crate::secret::SecretString;
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;

    /// Set in the environment of a re-run of this test binary: the shell script the re-run
    /// `exec`s into.
    const SCRIPT_VAR: &str = "AGENTKEYS_TEST_EXEC_SCRIPT";

    fn creds() -> AwsCredentials {
        AwsCredentials {
            access_key_id: "ASIAEXAMPLE".into(),
            secret_access_key: SecretString::from("sec'ret"),
            session_token: SecretString::from("tok en"),
            expiration: 1_893_456_000,
        }
    }

    fn sh(script: &str) -> Command {
        command(
            OsStr::new("sh"),
            &["-c".into(), script.into()],
            &creds(),
            "eu-west-1",
            "0xabc",
        )
    }

    #[test]
    fn removes_only_conflicting_vars() {
        let names = [
            "AWS_PROFILE",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN",
            "AWS_CONFIG_FILE",
            "AWS_SHARED_CREDENTIALS_FILE",
            "PATH",
            "AWS_ENDPOINT_URL",
            "HOME",
        ]
        .map(OsString::from);
        let removed = vars_to_remove(names);
        assert_eq!(
            removed,
            [
                "AWS_PROFILE",
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "AWS_CONTAINER_AUTHORIZATION_TOKEN",
                "AWS_CONFIG_FILE",
                "AWS_SHARED_CREDENTIALS_FILE"
            ]
            .map(OsString::from)
        );
    }

    #[test]
    fn child_gets_exactly_these_credentials() {
        // Runs as a child (spawned, not exec'd) to read the environment it gets.
        let out = sh(
            "printf '%s|' \"$AWS_ACCESS_KEY_ID\" \"$AWS_SECRET_ACCESS_KEY\" \
             \"$AWS_SESSION_TOKEN\" \"$AWS_REGION\" \"$AWS_DEFAULT_REGION\" \
             \"$AGENTKEYS_USER_WALLET\" \"${AWS_PROFILE-unset}\" \
             \"${AWS_CONTAINER_CREDENTIALS_FULL_URI-unset}\" \"$KEEP_ME\"",
        )
        .env("KEEP_ME", "kept")
        .output()
        .expect("sh");
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "ASIAEXAMPLE|sec'ret|tok en|eu-west-1|eu-west-1|0xabc|unset|unset|kept|"
        );
    }

    /// Not a test of its own: the body of the re-runs below. When [`SCRIPT_VAR`] is set, this
    /// test process replaces itself with `sh -c <script>` through [`exec`].
    #[test]
    fn exec_child_helper() {
        let Some(script) = std::env::var_os(SCRIPT_VAR) else {
            return;
        };
        let cmd = command(
            OsStr::new("sh"),
            &["-c".into(), script],
            &creds(),
            "eu-west-1",
            "0xabc",
        );
        let e = exec(cmd);
        panic!("exec failed: {e}");
    }

    /// Re-runs this test binary so that its `exec_child_helper` execs into `script`, with
    /// `extra_env` in its environment.
    fn rerun(script: &str, extra_env: &[(&str, &str)]) -> std::process::Child {
        let exe = std::env::current_exe().expect("current_exe");
        let mut c = Command::new(exe);
        c.args([
            "--exact",
            "exec::tests::exec_child_helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(SCRIPT_VAR, script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        for (k, v) in extra_env {
            c.env(k, v);
        }
        c.spawn().expect("re-run test binary")
    }

    #[test]
    fn exec_passes_the_exit_code_through() {
        for code in [0, 7, 255] {
            let out = rerun(&format!("exit {code}"), &[])
                .wait_with_output()
                .expect("wait");
            assert_eq!(out.status.code(), Some(code), "{out:?}");
            assert_eq!(exit_code_of(out.status), code);
        }
    }

    #[test]
    fn exec_death_by_signal_is_128_plus_signo() {
        let out = rerun("kill -TERM $$", &[])
            .wait_with_output()
            .expect("wait");
        assert_eq!(out.status.signal(), Some(15), "{out:?}");
        assert_eq!(exit_code_of(out.status), 143);
    }

    #[test]
    fn exec_keeps_the_pid_so_signals_reach_the_command() {
        // The command reports its PID and environment, then waits; SIGTERM to the PID we
        // started (the client's) must end the command itself.
        let mut child = rerun(
            "echo \"child: $$ $AWS_ACCESS_KEY_ID ${AWS_PROFILE-unset} ${AWS_CONTAINER_AUTHORIZATION_TOKEN-unset}\"; \
             exec sleep 30",
            &[
                ("AWS_PROFILE", "stale"),
                ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "stale"),
            ],
        );
        // The test harness prints its own text first ("running 1 test", "test … ... ").
        let line = {
            use std::io::BufRead;
            let stdout = child.stdout.take().expect("stdout");
            std::io::BufReader::new(stdout)
                .lines()
                .map_while(std::result::Result::ok)
                .find_map(|l| l.split_once("child: ").map(|(_, rest)| rest.to_owned()))
                .unwrap_or_default()
        };
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            fields,
            [
                child.id().to_string().as_str(),
                "ASIAEXAMPLE",
                "unset",
                "unset"
            ],
            "{line:?}"
        );
        let killed = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(killed.success());
        let status = child.wait().expect("wait");
        assert_eq!(status.signal(), Some(15), "{status:?}");
    }

    #[test]
    fn missing_command_is_127() {
        let cmd = command(
            OsStr::new("/nonexistent/agentkeys-no-such-command"),
            &[],
            &creds(),
            "r",
            "w",
        );
        let e = exec(cmd);
        assert_eq!(e.exit_code(), 127, "{e}");
        assert!(e.to_string().contains("agentkeys-no-such-command"), "{e}");
    }
}
