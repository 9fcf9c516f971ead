//! Refreshing credentials for long-running processes (SPEC §8):
//!
//! * `agentkeys exec --refresh -- CMD`: CMD runs as a child while this process serves the
//!   loopback container-credentials endpoint ([`crate::endpoint`]) for it, and exits with CMD's
//!   status. SIGINT, SIGTERM and SIGHUP are passed on to CMD.
//! * `agentkeys credentials serve`: the same endpoint as a sidecar; prints the two variables to
//!   export and runs until SIGTERM or SIGINT.
//! * `agentkeys exec --web-identity -- CMD`: CMD's SDK calls STS itself with a JWT from a 0600
//!   file that this process rewrites before each token expires.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};

use crate::aws::{self, StsTarget};
use crate::context::Context;
use crate::endpoint::Endpoint;
use crate::error::{Error, Result};
use crate::exec::{self, exit_code_of};
use crate::output::emit;
use crate::renew::Renewer;
use crate::{fsutil, renew};

/// Where a JWT is rewritten, relative to its remaining life: at a third left.
const TOKEN_REWRITE_FRACTION: i64 = 3;
/// Wait before retrying a failed token renewal.
const TOKEN_RETRY: Duration = Duration::from_secs(10);

/// `agentkeys exec --refresh`.
pub(crate) async fn exec_refresh(
    renewer: Renewer,
    program: &OsStr,
    args: &[OsString],
) -> Result<()> {
    let renewer = Arc::new(renewer);
    // The first credentials before CMD starts: a setup error shows here, not inside CMD.
    let first = renewer.current().await?;
    let endpoint = Endpoint::start(renewer.clone(), 0).await?;
    let region = renewer.target().region.clone();
    let mut cmd = child_command(program, args);
    for (k, v) in endpoint.env_vars() {
        cmd.env(k, v);
    }
    set_region_and_wallet(&mut cmd, &region, &first.wallet);
    let child = spawn(cmd, program)?;
    let status = wait_forwarding_signals(child).await;
    endpoint.shutdown().await;
    exit_with(status)
}

/// `agentkeys credentials serve`.
pub(crate) async fn serve(renewer: Renewer, port: u16, out: &mut dyn Write) -> Result<()> {
    let renewer = Arc::new(renewer);
    let first = renewer.current().await?;
    let endpoint = Endpoint::start(renewer.clone(), port).await?;
    let mut text = String::new();
    for (k, v) in endpoint.env_vars() {
        text.push_str(&format!("export {k}={}\n", aws::shell_quote(&v)));
    }
    text.push_str(&format!(
        "export AGENTKEYS_USER_WALLET={}\n",
        aws::shell_quote(&first.wallet)
    ));
    emit(out, &text)?;
    eprintln!(
        "agentkeys: serving credentials for {} at {} until SIGTERM or SIGINT",
        renewer.target().role_arn,
        endpoint.url
    );
    let mut term = signal(SignalKind::terminate()).map_err(signal_error)?;
    let mut int = signal(SignalKind::interrupt()).map_err(signal_error)?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    endpoint.shutdown().await;
    eprintln!("agentkeys: credentials endpoint stopped");
    Ok(())
}

/// `agentkeys exec --web-identity`.
pub(crate) async fn exec_web_identity(
    renewer: Renewer,
    token_dir: &Path,
    program: &OsStr,
    args: &[OsString],
) -> Result<()> {
    let minted = renewer.mint().await?;
    fsutil::create_private_dir(token_dir)?;
    let path = token_dir.join(format!("web-identity-{}.jwt", std::process::id()));
    fsutil::write_private_atomic(&path, minted.jwt.as_bytes())?;
    let target = renewer.target().clone();
    let mut cmd = child_command(program, args);
    cmd.env("AWS_WEB_IDENTITY_TOKEN_FILE", &path)
        .env("AWS_ROLE_ARN", &target.role_arn)
        .env(
            "AWS_ROLE_SESSION_NAME",
            aws::session_name(&minted.actor_omni),
        );
    if let Some(e) = &target.endpoint {
        // Service-specific endpoint variable of the AWS SDKs: their STS calls go to this
        // endpoint (e.g. Ceph RGW).
        cmd.env("AWS_ENDPOINT_URL_STS", e);
    }
    set_region_and_wallet(&mut cmd, &target.region, &minted.wallet);
    let child = spawn(cmd, program)?;
    let keeper = tokio::spawn(keep_token_fresh(
        renewer,
        path.clone(),
        aws::parse_rfc3339(&minted.expiration).unwrap_or_else(aws::now_unix),
    ));
    let status = wait_forwarding_signals(child).await;
    keeper.abort();
    let _ = fsutil::remove_if_exists(&path);
    exit_with(status)
}

/// Rewrites the token file when a third of the current token's life is left; on failure,
/// retries every [`TOKEN_RETRY`] (an agent's ended session is renewed by the [`Renewer`]).
async fn keep_token_fresh(renewer: Renewer, path: PathBuf, mut expires: i64) {
    loop {
        let left = (expires - aws::now_unix()).max(0);
        let wait = left - left / TOKEN_REWRITE_FRACTION;
        tokio::time::sleep(Duration::from_secs(u64::try_from(wait).unwrap_or(0))).await;
        loop {
            match renewer.mint().await {
                Ok(m) => {
                    match fsutil::write_private_atomic(&path, m.jwt.as_bytes()) {
                        Ok(()) => eprintln!(
                            "agentkeys: renewed the web identity token in {} (expires {})",
                            path.display(),
                            m.expiration
                        ),
                        Err(e) => eprintln!("agentkeys: error: {e}"),
                    }
                    expires = aws::parse_rfc3339(&m.expiration).unwrap_or_else(aws::now_unix);
                    break;
                }
                Err(e) => {
                    eprintln!("agentkeys: error: cannot renew the web identity token: {e}");
                    tokio::time::sleep(TOKEN_RETRY).await;
                }
            }
        }
    }
}

/// CMD with the inherited environment minus the variables that would point an SDK elsewhere.
fn child_command(program: &OsStr, args: &[OsString]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args);
    for k in exec::vars_to_remove(std::env::vars_os().map(|(k, _)| k)) {
        cmd.env_remove(k);
    }
    // Static keys would win over the endpoint or the token file in every SDK's chain.
    for k in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
    ] {
        cmd.env_remove(k);
    }
    cmd
}

fn set_region_and_wallet(cmd: &mut Command, region: &str, wallet: &str) {
    cmd.env("AWS_REGION", region)
        .env("AWS_DEFAULT_REGION", region)
        .env("AGENTKEYS_USER_WALLET", wallet);
}

fn spawn(mut cmd: Command, program: &OsStr) -> Result<Child> {
    cmd.spawn().map_err(|source| Error::Exec {
        program: program.to_string_lossy().into_owned(),
        source,
    })
}

fn signal_error(e: std::io::Error) -> Error {
    Error::InvalidInput(format!("cannot install signal handlers: {e}"))
}

/// Waits for CMD; SIGINT, SIGTERM and SIGHUP sent to this process are sent on to it.
async fn wait_forwarding_signals(mut child: Child) -> std::io::Result<std::process::ExitStatus> {
    let pid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .and_then(rustix::process::Pid::from_raw);
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        return child.wait().await;
    };
    loop {
        let sig = tokio::select! {
            status = child.wait() => return status,
            _ = term.recv() => rustix::process::Signal::TERM,
            _ = int.recv() => rustix::process::Signal::INT,
            _ = hup.recv() => rustix::process::Signal::HUP,
        };
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process(pid, sig);
        }
    }
}

/// Ends this process with CMD's exit status (128+N for a death by signal N).
fn exit_with(status: std::io::Result<std::process::ExitStatus>) -> Result<()> {
    match status {
        Ok(s) => {
            let _ = std::io::stdout().flush();
            std::process::exit(exit_code_of(s))
        }
        Err(e) => Err(Error::InvalidInput(format!(
            "cannot wait for the command: {e}"
        ))),
    }
}

/// The renewer for the flags of these commands.
pub(crate) fn renewer(
    ctx: &Context,
    target: StsTarget,
    duration: u32,
    margin: Option<u32>,
    grant: Option<String>,
) -> Result<Renewer> {
    let margin = margin.unwrap_or(renew::DEFAULT_MARGIN.min(duration / 3));
    Renewer::new(ctx.clone(), target, duration, margin, grant)
}
