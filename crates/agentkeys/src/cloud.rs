//! Temporary AWS credentials: `agentkeys aws …`, `agentkeys exec` and `agentkeys
//! verify-isolation` (mint a token pinned to a role, then an unsigned STS call).

use clap::{Args, Subcommand};
use std::ffi::OsString;
use std::io::Write;

use crate::aws::{self, AwsCredentials, DEFAULT_DURATION, MAX_DURATION, MIN_DURATION, StsTarget};
use crate::cache::{self, CacheKey, CredentialCache, Miss};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::output::emit;
use crate::{exec, isolation, refresh};
use agentkeys_types::api::{MintRequest, MintResponse};
use clap::ValueEnum;

/// Which role to assume, and where STS is.
#[derive(Debug, Clone, Args)]
pub struct StsArgs {
    /// The IAM role to assume; the minted token is pinned to it.
    #[arg(long, env = "AGENTKEYS_ROLE_ARN", value_name = "ARN")]
    pub role_arn: String,

    /// STS endpoint for S3-compatible clouds such as Ceph RGW (e.g. http://127.0.0.1:17480).
    /// Default: AWS STS in the region.
    #[arg(long, env = "AGENTKEYS_STS_ENDPOINT", value_name = "URL")]
    pub sts_endpoint: Option<String>,

    /// AWS region. Default: AWS_REGION, else AWS_DEFAULT_REGION, else us-east-1.
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
}

#[derive(Debug, Clone, Copy, Args)]
pub struct DurationArg {
    /// Lifetime of the credentials in seconds (900–43200; the role's maximum session duration
    /// may be lower).
    #[arg(long = "duration", value_name = "SECONDS", default_value_t = DEFAULT_DURATION,
          value_parser = clap::value_parser!(u32).range(i64::from(MIN_DURATION)..=i64::from(MAX_DURATION)))]
    pub secs: u32,
}

#[derive(Debug, Subcommand)]
pub enum AwsCommand {
    /// Print temporary AWS credentials for a role, as JSON or as shell `export` lines.
    ///
    /// `eval "$(agentkeys aws credentials --role-arn ARN --format env)"` sets
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION,
    /// AWS_DEFAULT_REGION and AGENTKEYS_USER_WALLET in the current shell.
    Credentials {
        #[command(flatten)]
        sts: StsArgs,

        #[command(flatten)]
        duration: DurationArg,

        /// `json`: {"Version":1,"AccessKeyId",…,"Expiration"}; `env`: shell export lines,
        /// values single-quoted.
        #[arg(long, value_enum, default_value_t = CredentialFormat::Json)]
        format: CredentialFormat,

        /// Audience of the token; must be in the broker's allow-list and accepted by the
        /// cloud's OIDC provider (default: the broker's, sts.amazonaws.com).
        #[arg(long, value_name = "AUDIENCE")]
        audience: Option<String>,

        /// Mint under this grant (agents): the credentials also reach the granted part of the
        /// master's data, and one use of the grant is consumed.
        #[arg(long, value_name = "GRANT_ID")]
        grant: Option<String>,
    },

    /// Print credentials in the AWS `credential_process` format, for ~/.aws/config:
    /// `credential_process = agentkeys aws credential-process --role-arn ARN`.
    ///
    /// Credentials are cached (0600 file under the profile directory, one per broker, role,
    /// endpoint and region) until 5 minutes before they expire; a cached answer calls neither
    /// the broker nor STS. `agentkeys logout` deletes the cache.
    CredentialProcess {
        #[command(flatten)]
        sts: StsArgs,

        #[command(flatten)]
        duration: DurationArg,

        /// Mint under this grant (agents); cached separately from the session's own credentials.
        #[arg(long, value_name = "GRANT_ID")]
        grant: Option<String>,
    },
}

/// How `exec` hands credentials to the command.
#[derive(Debug, Clone, Copy, Default, Args)]
pub struct ExecMode {
    /// Serve refreshing credentials: the command gets AWS_CONTAINER_CREDENTIALS_FULL_URI and
    /// AWS_CONTAINER_AUTHORIZATION_TOKEN (random for this run) for a loopback endpoint that
    /// renews the token and the STS credentials before they expire, instead of static keys.
    /// Every AWS SDK refreshes from it by itself. The command runs as a child (not in place of
    /// this process); signals are passed on and its exit status is returned.
    #[arg(long, conflicts_with = "web_identity")]
    pub refresh: bool,

    /// Write the JWT to a 0600 file that is rewritten before each token expires, and set
    /// AWS_WEB_IDENTITY_TOKEN_FILE, AWS_ROLE_ARN and AWS_ROLE_SESSION_NAME (and
    /// AWS_ENDPOINT_URL_STS with --sts-endpoint): the command's SDK calls STS itself.
    #[arg(long)]
    pub web_identity: bool,

    /// With --refresh: renew the credentials when fewer than this many seconds of their life
    /// remain (default: 300, or a third of --duration if less; at most --duration minus 30).
    #[arg(long, value_name = "SECONDS", requires = "refresh")]
    pub refresh_margin: Option<u32>,
}

#[derive(Debug, Subcommand)]
pub enum CredentialsCommand {
    /// Serve refreshing credentials on 127.0.0.1 in the AWS container-credentials format, as a
    /// sidecar, until SIGTERM or SIGINT.
    ///
    /// Prints `export AWS_CONTAINER_CREDENTIALS_FULL_URI=…` and `export
    /// AWS_CONTAINER_AUTHORIZATION_TOKEN=…` (a random token for this run; requests without it
    /// get 401, with another value 403), plus AGENTKEYS_USER_WALLET. A process with these two
    /// variables, e.g. a third-party MCP server or any AWS SDK, fetches credentials here and
    /// again before they expire; the endpoint renews the token and the STS credentials (and an
    /// agent's ended session, by device proof) as needed.
    #[command(after_help = "Example: agentkeys credentials serve --role-arn \
                      arn:aws:iam::123456789012:role/data > creds.env & . ./creds.env")]
    Serve {
        #[command(flatten)]
        sts: StsArgs,

        #[command(flatten)]
        duration: DurationArg,

        /// Mint under this grant (agents): the credentials also reach the granted part of the
        /// master's data; each renewal consumes one use.
        #[arg(long, value_name = "GRANT_ID")]
        grant: Option<String>,

        /// Renew the credentials when fewer than this many seconds of their life remain
        /// (default: 300, or a third of --duration if less; at most --duration minus 30).
        #[arg(long, value_name = "SECONDS")]
        refresh_margin: Option<u32>,

        /// Port on 127.0.0.1 (default 0: any free port, shown in the printed URL).
        #[arg(long, value_name = "PORT", default_value_t = 0)]
        port: u16,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CredentialFormat {
    /// Shell `export` lines.
    Env,
    /// The AWS credential_process JSON document.
    Json,
}

/// Runs `agentkeys aws …`.
pub(crate) async fn run(ctx: &Context, command: AwsCommand, out: &mut dyn Write) -> Result<()> {
    match command {
        AwsCommand::Credentials {
            sts,
            duration,
            format,
            audience,
            grant,
        } => aws_credentials(ctx, &sts, duration.secs, format, (audience, grant), out).await,
        AwsCommand::CredentialProcess {
            sts,
            duration,
            grant,
        } => aws_credential_process(ctx, &sts, duration.secs, grant, out).await,
    }
}

/// `--role-arn`, `--sts-endpoint` and `--region`, checked.
fn sts_target(a: &StsArgs) -> Result<StsTarget> {
    let role_arn = a.role_arn.trim().to_owned();
    aws::check_role_arn(&role_arn)?;
    let endpoint = a
        .sts_endpoint
        .as_deref()
        .map(|e| aws::normalize_endpoint(e, "--sts-endpoint"))
        .transpose()?;
    Ok(StsTarget {
        role_arn,
        region: aws::region_from_env(a.region.as_deref())?,
        endpoint,
    })
}

/// A token from the signed-in session, pinned to the role.
async fn mint_for_role(
    ctx: &Context,
    role_arn: &str,
    audience: Option<String>,
    grant_id: Option<String>,
) -> Result<MintResponse> {
    let profile = ctx.profile()?;
    let saved = profile.require_session()?;
    let client = ctx.broker_for_session(&saved)?;
    let req = MintRequest {
        audience,
        role_arn: Some(role_arn.to_owned()),
        grant_id,
    };
    client.mint(&saved.session_token, &req).await
}

/// Mint (with an optional audience and grant), then STS.
async fn fetch_credentials(
    ctx: &Context,
    target: &StsTarget,
    duration: u32,
    (audience, grant): (Option<String>, Option<String>),
) -> Result<(AwsCredentials, MintResponse)> {
    let minted = mint_for_role(ctx, &target.role_arn, audience, grant).await?;
    let name = aws::session_name(&minted.actor_omni);
    let creds = aws::assume_role_with_web_identity(target, &name, &minted.jwt, duration).await?;
    Ok((creds, minted))
}

async fn aws_credentials(
    ctx: &Context,
    sts: &StsArgs,
    duration: u32,
    format: CredentialFormat,
    intent: (Option<String>, Option<String>),
    out: &mut dyn Write,
) -> Result<()> {
    let target = sts_target(sts)?;
    let (creds, minted) = fetch_credentials(ctx, &target, duration, intent).await?;
    match format {
        CredentialFormat::Json => emit(out, &aws::render_json(&creds)?),
        CredentialFormat::Env => emit(
            out,
            &aws::render_env(&creds, &target.region, &minted.wallet),
        ),
    }
}

async fn aws_credential_process(
    ctx: &Context,
    sts: &StsArgs,
    duration: u32,
    grant: Option<String>,
    out: &mut dyn Write,
) -> Result<()> {
    let target = sts_target(sts)?;
    let profile = ctx.profile()?;
    let saved = profile.require_session()?;
    // Only checks which broker the session belongs to; no request yet.
    let client = ctx.broker_for_session(&saved)?;
    let key = CacheKey {
        broker_url: client.base_url().to_owned(),
        role_arn: target.role_arn.clone(),
        sts_endpoint: target.endpoint.clone(),
        region: target.region.clone(),
        grant: grant.clone(),
    };
    let session = cache::session_fingerprint(&saved.session_token);
    let cache = CredentialCache::new(profile.dir());
    match cache.load(&key, &session, aws::now_unix()) {
        Ok(hit) => return emit(out, &aws::render_json(&hit.credentials)?),
        Err(Miss::Corrupt(reason)) => eprintln!(
            "agentkeys: note: ignoring the cached credentials in {} ({reason}); fetching new ones",
            cache.path(&key).display()
        ),
        Err(Miss::Absent | Miss::Stale | Miss::Other) => {}
    }
    let (creds, minted) = fetch_credentials(ctx, &target, duration, (None, grant)).await?;
    if let Err(e) = cache.store(&key, &session, &creds, &minted.wallet) {
        // The credentials are good; only the next call will be slower.
        eprintln!("agentkeys: warning: cannot cache the credentials: {e}");
    }
    emit(out, &aws::render_json(&creds)?)
}

pub(crate) async fn exec_command(
    ctx: &Context,
    sts: &StsArgs,
    duration: u32,
    grant: Option<String>,
    mode: ExecMode,
    command: Vec<OsString>,
) -> Result<()> {
    let Some((program, args)) = command.split_first() else {
        return Err(Error::InvalidInput(
            "no command given; usage: agentkeys exec --role-arn ARN -- CMD [ARGS…]".to_owned(),
        ));
    };
    let target = sts_target(sts)?;
    if mode.refresh {
        let r = refresh::renewer(ctx, target, duration, mode.refresh_margin, grant)?;
        return refresh::exec_refresh(r, program, args).await;
    }
    if mode.web_identity {
        let dir = ctx.profile()?.dir().to_path_buf();
        let r = refresh::renewer(ctx, target, duration, None, grant)?;
        return refresh::exec_web_identity(r, &dir, program, args).await;
    }
    let (creds, minted) = fetch_credentials(ctx, &target, duration, (None, grant)).await?;
    let cmd = exec::command(program, args, &creds, &target.region, &minted.wallet);
    // Returns only if the command could not be started.
    Err(exec::exec(cmd))
}

pub(crate) async fn credentials_serve(
    ctx: &Context,
    sts: &StsArgs,
    (duration, margin): (u32, Option<u32>),
    grant: Option<String>,
    port: u16,
    out: &mut dyn Write,
) -> Result<()> {
    let target = sts_target(sts)?;
    let r = refresh::renewer(ctx, target, duration, margin, grant)?;
    refresh::serve(r, port, out).await
}

pub(crate) async fn mcp(
    ctx: &Context,
    sts: &StsArgs,
    bucket: String,
    grant: Option<String>,
    s3_endpoint: Option<String>,
) -> Result<()> {
    let target = sts_target(sts)?;
    let s3_endpoint = s3_endpoint
        .map(|e| aws::normalize_endpoint(&e, "--s3-endpoint"))
        .transpose()?;
    check_bucket(&bucket)?;
    let renewer = refresh::renewer(ctx, target, DEFAULT_DURATION, None, grant)?;
    crate::mcp::serve(crate::mcp::Setup {
        renewer,
        bucket,
        s3_endpoint,
    })
    .await
}

fn check_bucket(bucket: &str) -> Result<()> {
    if bucket.trim().is_empty() || bucket.contains('/') {
        return Err(Error::InvalidInput(format!(
            "invalid --bucket {bucket:?}: give the bucket name only, without s3:// or a prefix"
        )));
    }
    Ok(())
}

/// Writes the start of a step line and flushes it, so a slow network call shows where it is.
fn step(out: &mut dyn Write, text: &str) -> Result<()> {
    emit(out, &format!("{text} ... "))
}

pub(crate) async fn verify_isolation(
    ctx: &Context,
    sts: &StsArgs,
    bucket: &str,
    s3_endpoint: Option<&str>,
    other_prefix: &str,
    out: &mut dyn Write,
) -> Result<()> {
    let target = sts_target(sts)?;
    let s3_endpoint = s3_endpoint
        .map(|e| aws::normalize_endpoint(e, "--s3-endpoint"))
        .transpose()?;
    check_bucket(bucket)?;
    if other_prefix.is_empty() {
        return Err(Error::InvalidInput(
            "--other-prefix must not be empty (default: 0xdeadbeef/)".to_owned(),
        ));
    }
    let s3_label = s3_endpoint
        .clone()
        .unwrap_or_else(|| format!("AWS S3 ({})", target.region));
    emit(
        out,
        &format!(
            "role:   {}\nSTS:    {} (region {})\nS3:     {s3_label}, bucket {bucket}\n",
            target.role_arn,
            target.endpoint_label(),
            target.region
        ),
    )?;

    step(out, "1/4 mint a token pinned to the role")?;
    let minted = match mint_for_role(ctx, &target.role_arn, None, None).await {
        Ok(m) => m,
        Err(e) => {
            emit(
                out,
                "FAILED\nFAIL: the broker did not mint a token (error below)\n",
            )?;
            return Err(e);
        }
    };
    emit(
        out,
        &format!(
            "ok (wallet {}, actor {})\n",
            minted.wallet, minted.actor_omni
        ),
    )?;

    step(out, "2/4 STS AssumeRoleWithWebIdentity")?;
    let name = aws::session_name(&minted.actor_omni);
    let creds =
        match aws::assume_role_with_web_identity(&target, &name, &minted.jwt, aws::MIN_DURATION)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                emit(
                    out,
                    "FAILED\nFAIL: STS did not issue credentials (error below)\n",
                )?;
                return Err(e);
            }
        };
    emit(
        out,
        &format!(
            "ok (session {name}, key {}, expires {})\n",
            creds.access_key_id,
            creds.expiration_rfc3339()
        ),
    )?;

    let own_prefix = format!("{}/", minted.wallet);
    if other_prefix == own_prefix {
        return Err(Error::InvalidInput(format!(
            "--other-prefix {other_prefix} is this session's own prefix; name someone else's"
        )));
    }
    let s3 = crate::s3::S3::new(&creds, &target.region, s3_endpoint.as_deref())?;
    step(
        out,
        &format!("3/4 list s3://{bucket}/{own_prefix} (own prefix, must succeed)"),
    )?;
    let own = isolation::list_prefix(&s3, bucket, &own_prefix).await;
    emit(out, &format!("{}\n", own.describe()))?;
    step(
        out,
        &format!("4/4 list s3://{bucket}/{other_prefix} (another prefix, must be denied)"),
    )?;
    let other = isolation::list_prefix(&s3, bucket, other_prefix).await;
    emit(out, &format!("{}\n", other.describe()))?;

    let verdict = isolation::verdict(&own, &other, bucket);
    let text = verdict.text(other_prefix);
    emit(out, &format!("{text}\n"))?;
    if verdict.passed() {
        Ok(())
    } else {
        let why = text.strip_prefix("FAIL: ").unwrap_or(&text).to_owned();
        Err(Error::IsolationFailed(why))
    }
}
