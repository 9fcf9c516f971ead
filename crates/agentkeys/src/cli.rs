//! Command-line interface. The doc comments are the `--help` text.

use std::ffi::OsString;

use clap::{Parser, Subcommand};

use std::io::Write;

use agentkeys_types::api::MintRequest;

pub use crate::agent::AgentCommand;
pub use crate::agents::{AgentTarget, AgentsCommand};
#[cfg(test)]
use crate::aws::DEFAULT_DURATION;
pub use crate::cloud::{
    AwsCommand, CredentialFormat, CredentialsCommand, DurationArg, ExecMode, StsArgs,
};
#[cfg(test)]
use crate::config::DEFAULT_PROFILE;
use crate::context::Context;
pub use crate::context::GlobalArgs;
use crate::error::Result;
pub use crate::identities::{IdentitiesCommand, StepUpArgs};
use crate::isolation::DEFAULT_OTHER_PREFIX;
pub use crate::key::KeyCommand;
pub use crate::login::LoginCommand;
pub use crate::sessions::SessionsCommand;
pub use crate::signin::{CodeArgs, TimeoutArg};
use crate::{
    account, agent, agents, audit, cloud, grants, identities, key, login, requests, sessions, token,
};

/// AgentKeys client: sign in to an AgentKeys broker, mint short-lived OIDC tokens, and trade
/// them for temporary cloud credentials (no AWS credentials needed).
#[derive(Debug, Parser)]
#[command(
    name = "agentkeys",
    version,
    propagate_version = true,
    after_help = "Exit status: 0 ok, 1 error, 2 usage error, 3 sign-in required, \
                  4 broker unreachable, 5 rate limited, 6 STS or S3 refused or unreachable, \
                  7 verify-isolation FAIL. `exec` exits with the command's status \
                  (127 not found, 126 not runnable)."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create and inspect wallet key files.
    #[command(subcommand)]
    Key(KeyCommand),

    /// Sign in to the broker and save the session in the profile.
    #[command(subcommand)]
    Login(LoginCommand),

    /// Show who the saved session belongs to, as the broker sees it.
    Whoami {
        /// Print the broker's JSON answer instead of the short form.
        #[arg(long)]
        json: bool,
    },

    /// End the saved session at the broker and delete it locally (with its cached AWS
    /// credentials).
    Logout {
        /// Only delete the local session, without telling the broker (it then stays valid
        /// until it expires).
        #[arg(long, conflicts_with = "all")]
        local: bool,

        /// End every session of the signed-in actor at the broker (all devices and profiles
        /// signed in as it), then delete the local one.
        #[arg(long)]
        all: bool,
    },

    /// A wallet master's linked identities: sign-ins by a linked email address or OIDC account
    /// give a session of that master.
    #[command(subcommand)]
    Identities(IdentitiesCommand),

    /// The agent's side of pairing: create a device key, then pair it with a master to get an
    /// agent session in this profile.
    #[command(subcommand)]
    Agent(AgentCommand),

    /// The master's side: approve pairing codes and list, suspend, resume or remove your
    /// agents.
    #[command(subcommand)]
    Agents(AgentsCommand),

    /// List or revoke the live sessions of the signed-in actor (master or agent).
    #[command(subcommand)]
    Sessions(SessionsCommand),

    /// Your audit log (a master's own events and its agents'), oldest first, one line each.
    Audit {
        /// Only events of this kind, e.g. mint or sign_in.wallet.
        #[arg(long, value_name = "KIND")]
        kind: Option<String>,
        /// Only events of this agent: its label or omni.
        #[arg(long, value_name = "LABEL_OR_OMNI")]
        agent: Option<String>,
        /// Only events at or after this RFC 3339 time, e.g. 2025-01-31T00:00:00Z.
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Stop after this many events.
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
        /// One JSON object a line (NDJSON), as the broker sent it.
        #[arg(long)]
        json: bool,
    },

    /// Grants: give one of your agents an expiring, narrow part of your own prefix (create, list,
    /// revoke); an agent lists the grants it was given.
    #[command(subcommand)]
    Grants(crate::grants::GrantsCommand),

    /// Access requests: a master lists, approves or denies its agents' requests for grants; an
    /// agent checks its own (it asks with `agentkeys grants request`).
    #[command(subcommand)]
    Requests(crate::requests::RequestsCommand),

    /// Mint a short-lived OIDC JWT for the signed-in session and print it on stdout, so
    /// `$(agentkeys token)` works.
    Token {
        /// Audience of the token; must be in the broker's allow-list (default: the broker's,
        /// sts.amazonaws.com).
        #[arg(long, value_name = "AUDIENCE")]
        audience: Option<String>,

        /// Pin the token to this IAM role ARN (claim https://aws.amazon.com/roles).
        #[arg(long, value_name = "ARN")]
        role_arn: Option<String>,

        /// Mint under this grant (agents): the token also reaches the granted part of the
        /// master's data, and one use of the grant is consumed.
        #[arg(long, value_name = "GRANT_ID")]
        grant: Option<String>,

        /// Print the broker's JSON answer (jwt, expiration, wallet, actor_omni) instead of
        /// only the JWT.
        #[arg(long)]
        json: bool,
    },

    /// Temporary AWS credentials: mint a token pinned to a role and call STS
    /// AssumeRoleWithWebIdentity with it (unsigned: no AWS credentials needed).
    #[command(subcommand)]
    Aws(AwsCommand),

    /// Run a command with temporary AWS credentials for a role in its environment.
    ///
    /// Sets AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION,
    /// AWS_DEFAULT_REGION and AGENTKEYS_USER_WALLET (the prefix the credentials may use), and
    /// removes inherited AWS_PROFILE, AWS_SHARED_CREDENTIALS_FILE, AWS_CONFIG_FILE,
    /// AWS_CONTAINER_* and other variables that would point an SDK at other credentials. The
    /// client replaces itself with the command, so the command's exit status is the exit
    /// status, and signals sent to this process reach the command. These credentials are not
    /// refreshed: pick --duration to cover the command's run time, or use --refresh (any AWS
    /// SDK then renews them by itself) or --web-identity.
    #[command(
        override_usage = "agentkeys exec [OPTIONS] --role-arn <ARN> -- <CMD> [ARGS]...",
        after_help = "Example: agentkeys exec --role-arn arn:aws:iam::123456789012:role/data \
                      -- sh -c 'aws s3 ls \"s3://bucket/$AGENTKEYS_USER_WALLET/\"'"
    )]
    Exec {
        #[command(flatten)]
        sts: StsArgs,

        #[command(flatten)]
        duration: DurationArg,

        /// Mint under this grant (agents): the credentials also reach the granted part of the
        /// master's data.
        #[arg(long, value_name = "GRANT_ID")]
        grant: Option<String>,

        #[command(flatten)]
        mode: ExecMode,

        /// The command and its arguments, after `--`.
        #[arg(value_name = "CMD", required = true, num_args = 1.., trailing_var_arg = true,
              allow_hyphen_values = true, value_parser = clap::value_parser!(OsString))]
        command: Vec<OsString>,
    },

    /// A loopback credentials endpoint for other processes (containers, third-party MCP
    /// servers, any AWS SDK).
    #[command(subcommand)]
    Credentials(CredentialsCommand),

    /// An MCP server on stdio for agents: tools whoami, grants, request_access (ask the master
    /// for a grant), and storage_list, storage_get, storage_put and storage_delete on the bucket
    /// under the session's own prefix (or a granted one). The server keeps the credentials; no tool result, error or log line
    /// carries a key, secret, token or session.
    ///
    /// Wire it into an MCP client as a command: `agentkeys mcp --role-arn ARN --bucket B`
    /// (docs/agents.md has a config snippet).
    Mcp {
        #[command(flatten)]
        sts: StsArgs,

        /// The bucket whose policy confines sessions to their prefixes.
        #[arg(long, env = "AGENTKEYS_BUCKET", value_name = "BUCKET")]
        bucket: String,

        /// Mint under this grant (agents): the storage tools also reach the granted part of
        /// the master's data (each credential renewal consumes one use).
        #[arg(long, env = "AGENTKEYS_GRANT", value_name = "GRANT_ID")]
        grant: Option<String>,

        /// S3 endpoint for S3-compatible clouds such as Ceph RGW (path-style addressing is used
        /// then). Default: AWS S3 in the region.
        #[arg(long, env = "AGENTKEYS_S3_ENDPOINT", value_name = "URL")]
        s3_endpoint: Option<String>,
    },

    /// The acceptance test of the cloud setup: with the signed-in session's credentials, list
    /// the session's own prefix (must succeed) and another prefix (must be denied).
    ///
    /// Prints each step and a verdict. PASS exits 0; FAIL says what is likely wrong: both
    /// listings succeeded (the role still has a broad S3 grant, or the bucket policy allows more
    /// than the tagged prefixes), or both were denied (the token lacks the tags claim, the trust
    /// policy lacks sts:TagSession, or the bucket policy does not name this role).
    VerifyIsolation {
        #[command(flatten)]
        sts: StsArgs,

        /// The bucket whose policy confines sessions to their prefixes.
        #[arg(long, value_name = "BUCKET")]
        bucket: String,

        /// S3 endpoint for S3-compatible clouds such as Ceph RGW (path-style addressing is used
        /// then). Default: AWS S3 in the region.
        #[arg(long, env = "AGENTKEYS_S3_ENDPOINT", value_name = "URL")]
        s3_endpoint: Option<String>,

        /// A prefix that is not the session's; listing it must be denied.
        #[arg(long, value_name = "PREFIX", default_value = DEFAULT_OTHER_PREFIX)]
        other_prefix: String,
    },
}

/// Runs one parsed command line. Output goes to `out` (stdout in the binary); errors are
/// returned, never printed here.
pub async fn run(cli: Cli, out: &mut dyn Write) -> Result<()> {
    // Key commands touch neither the broker nor the profile, so a bad broker URL or profile
    // name does not stop them.
    let ctx = || Context::new(&cli.global);
    match cli.command {
        Command::Key(command) => key::run(command, out),
        Command::Login(command) => login::run(&ctx()?, command, out).await,
        Command::Identities(command) => identities::run(&ctx()?, command, out).await,
        Command::Whoami { json } => account::whoami(&ctx()?, json, out).await,
        Command::Logout { all: true, .. } => account::logout_all(&ctx()?, out).await,
        Command::Logout { local, all: false } => account::logout(&ctx()?, local, out).await,
        Command::Agent(command) => agent::run(&ctx()?, command, out).await,
        Command::Agents(command) => agents::run(&ctx()?, command, out).await,
        Command::Sessions(command) => sessions::run(&ctx()?, command, out).await,
        Command::Audit {
            kind,
            agent,
            since,
            limit,
            json,
        } => {
            audit::run(
                &ctx()?,
                audit::Filters {
                    kind,
                    agent,
                    since,
                    limit,
                },
                json,
                out,
            )
            .await
        }
        Command::Grants(command) => grants::run(&ctx()?, command, out).await,
        Command::Requests(command) => requests::run(&ctx()?, command, out).await,
        Command::Token {
            audience,
            role_arn,
            grant,
            json,
        } => {
            let req = MintRequest {
                audience,
                role_arn,
                grant_id: grant,
            };
            token::token(&ctx()?, req, json, out).await
        }
        Command::Aws(command) => cloud::run(&ctx()?, command, out).await,
        Command::Exec {
            sts,
            duration,
            grant,
            mode,
            command,
        } => cloud::exec_command(&ctx()?, &sts, duration.secs, grant, mode, command).await,
        Command::Credentials(CredentialsCommand::Serve {
            sts,
            duration,
            grant,
            refresh_margin,
            port,
        }) => {
            cloud::credentials_serve(
                &ctx()?,
                &sts,
                (duration.secs, refresh_margin),
                grant,
                port,
                out,
            )
            .await
        }
        Command::Mcp {
            sts,
            bucket,
            grant,
            s3_endpoint,
        } => cloud::mcp(&ctx()?, &sts, bucket, grant, s3_endpoint).await,
        Command::VerifyIsolation {
            sts,
            bucket,
            s3_endpoint,
            other_prefix,
        } => {
            cloud::verify_isolation(
                &ctx()?,
                &sts,
                &bucket,
                s3_endpoint.as_deref(),
                &other_prefix,
                out,
            )
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_work_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "agentkeys",
            "token",
            "--profile",
            "p",
            "--broker-url",
            "http://x",
        ])
        .expect("parse");
        assert_eq!(cli.global.profile, "p");
        assert_eq!(cli.global.broker_url.as_deref(), Some("http://x"));
    }

    #[test]
    fn insecure_http_is_off_unless_asked() {
        let cli = Cli::try_parse_from(["agentkeys", "whoami"]).expect("parse");
        assert!(!cli.global.insecure_http);
        let cli = Cli::try_parse_from(["agentkeys", "whoami", "--insecure-http"]).expect("parse");
        assert!(cli.global.insecure_http);
    }

    #[test]
    fn exec_takes_the_command_after_dashes() {
        let cli = Cli::try_parse_from([
            "agentkeys",
            "exec",
            "--role-arn",
            "arn:aws:iam:::role/r",
            "--",
            "aws",
            "s3",
            "ls",
            "--profile",
            "x",
        ])
        .expect("parse");
        let Command::Exec {
            sts,
            duration,
            command,
            ..
        } = cli.command
        else {
            panic!("not exec")
        };
        assert_eq!(sts.role_arn, "arn:aws:iam:::role/r");
        assert_eq!(duration.secs, DEFAULT_DURATION);
        assert_eq!(command, ["aws", "s3", "ls", "--profile", "x"]);
        assert_eq!(
            cli.global.profile, DEFAULT_PROFILE,
            "--profile after -- is CMD's"
        );
        // A command is required.
        assert!(Cli::try_parse_from(["agentkeys", "exec", "--role-arn", "a", "--"]).is_err());
    }

    #[test]
    fn duration_is_bounded() {
        let parse = |d: &str| {
            Cli::try_parse_from([
                "agentkeys",
                "aws",
                "credential-process",
                "--role-arn",
                "r",
                "--duration",
                d,
            ])
        };
        assert!(parse("899").is_err());
        assert!(parse("43201").is_err());
        assert!(parse("900").is_ok());
        assert!(parse("43200").is_ok());
    }

    #[test]
    fn credentials_defaults() {
        let cli = Cli::try_parse_from(["agentkeys", "aws", "credentials", "--role-arn", "r"])
            .expect("parse");
        let Command::Aws(AwsCommand::Credentials {
            format, duration, ..
        }) = cli.command
        else {
            panic!("not aws credentials")
        };
        assert_eq!(format, CredentialFormat::Json);
        assert_eq!(duration.secs, 3600);
        let cli = Cli::try_parse_from([
            "agentkeys",
            "verify-isolation",
            "--role-arn",
            "r",
            "--bucket",
            "b",
        ])
        .expect("parse");
        let Command::VerifyIsolation { other_prefix, .. } = cli.command else {
            panic!("not verify-isolation")
        };
        assert_eq!(other_prefix, "0xdeadbeef/");
    }

    #[test]
    fn agent_commands_parse() {
        let cli = Cli::try_parse_from(["agentkeys", "agent", "pair"]).expect("parse");
        let Command::Agent(AgentCommand::Pair {
            key_file,
            timeout,
            json,
        }) = cli.command
        else {
            panic!("not agent pair")
        };
        assert_eq!((key_file, timeout, json), (None, 600, false));
        assert!(Cli::try_parse_from(["agentkeys", "agent", "pair", "--timeout", "0"]).is_err());
        let cli = Cli::try_parse_from([
            "agentkeys",
            "agents",
            "approve",
            "abcd-efgh",
            "--label",
            "bot",
        ])
        .expect("parse");
        assert!(matches!(
            cli.command,
            Command::Agents(AgentsCommand::Approve { ref code, ref label, .. })
                if code == "abcd-efgh" && label == "bot"
        ));
        // The label is required.
        assert!(Cli::try_parse_from(["agentkeys", "agents", "approve", "ABCD-EFGH"]).is_err());
        let cli = Cli::try_parse_from(["agentkeys", "agents", "suspend", "bot", "--json"])
            .expect("parse");
        assert!(matches!(
            cli.command,
            Command::Agents(AgentsCommand::Suspend { ref target }) if target.agent == "bot" && target.json
        ));
        assert!(Cli::try_parse_from(["agentkeys", "logout", "--all", "--local"]).is_err());
        assert!(Cli::try_parse_from(["agentkeys", "sessions", "revoke", "abc"]).is_ok());
    }

    #[test]
    fn login_and_identity_commands_parse() {
        let cli =
            Cli::try_parse_from(["agentkeys", "login", "email", "a@example.com"]).expect("parse");
        assert!(matches!(
            cli.command,
            Command::Login(LoginCommand::Email { ref address, ref code, json: false })
                if address == "a@example.com" && code.timeout.secs == 600 && code.code.is_none()
        ));
        let cli = Cli::try_parse_from([
            "agentkeys",
            "login",
            "oidc",
            "google",
            "--timeout",
            "30",
            "--no-browser",
            "--code",
            "ABCD-EFGH",
            "--json",
        ])
        .expect("parse");
        assert!(matches!(
            cli.command,
            Command::Login(LoginCommand::Oidc { ref provider, ref code, no_browser: true, json: true })
                if provider == "google" && code.timeout.secs == 30
                    && code.code.as_deref() == Some("ABCD-EFGH")
        ));
        for t in ["0", "3601"] {
            assert!(
                Cli::try_parse_from(["agentkeys", "login", "email", "a@b.c", "--timeout", t])
                    .is_err()
            );
        }
        assert!(Cli::try_parse_from(["agentkeys", "login", "email"]).is_err());
        let cli = Cli::try_parse_from([
            "agentkeys",
            "identities",
            "unlink",
            "email",
            "bob@example.com",
        ])
        .expect("parse");
        assert!(matches!(
            cli.command,
            Command::Identities(IdentitiesCommand::Unlink { ref identity_type, ref identity_value })
                if identity_type == "email" && identity_value == "bob@example.com"
        ));
        for args in [
            &["identities", "list", "--json"][..],
            &[
                "identities",
                "link-email",
                "b@example.com",
                "--key-file",
                "k",
                "--timeout",
                "5",
            ],
            &["identities", "link-oidc", "google", "--key-file", "k"],
        ] {
            let mut v = vec!["agentkeys"];
            v.extend_from_slice(args);
            assert!(Cli::try_parse_from(&v).is_ok(), "{v:?}");
        }
        // Linking needs the wallet key: a bearer session alone cannot link.
        assert!(Cli::try_parse_from(["agentkeys", "identities", "link-email", "b@e.com"]).is_err());
    }

    #[test]
    fn chain_id_must_be_positive() {
        assert!(
            Cli::try_parse_from([
                "agentkeys",
                "login",
                "wallet",
                "--key-file",
                "k",
                "--chain-id",
                "0"
            ])
            .is_err()
        );
    }
}
