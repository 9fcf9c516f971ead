//! Command-line interface. The doc comments are the `--help` text.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::aws::{DEFAULT_DURATION, MAX_DURATION, MIN_DURATION};
use crate::config::DEFAULT_PROFILE;
use crate::isolation::DEFAULT_OTHER_PREFIX;

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

#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Broker base URL. Without it: the broker the profile signed in to, else
    /// http://127.0.0.1:8091.
    #[arg(long, env = "AGENTKEYS_BROKER_URL", value_name = "URL", global = true)]
    pub broker_url: Option<String>,

    /// Profile whose saved session is used; each profile signs in separately.
    #[arg(long, env = "AGENTKEYS_PROFILE", value_name = "NAME", default_value = DEFAULT_PROFILE, global = true)]
    pub profile: String,

    /// Directory for the client's state (default: $XDG_CONFIG_HOME/agentkeys or
    /// ~/.config/agentkeys).
    #[arg(long, env = "AGENTKEYS_CONFIG_DIR", value_name = "DIR", global = true)]
    pub config_dir: Option<PathBuf>,

    /// Allow a plain http:// broker URL that is not loopback (127.0.0.0/8, ::1, localhost).
    /// Sessions and tokens then cross the network in clear text: only on a network you trust.
    #[arg(long, env = "AGENTKEYS_INSECURE_HTTP", global = true,
          value_parser = clap::builder::FalseyValueParser::new())]
    pub insecure_http: bool,
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
    /// status, and signals sent to this process reach the command. The credentials are not
    /// refreshed: pick --duration to cover the command's run time.
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

        /// The command and its arguments, after `--`.
        #[arg(value_name = "CMD", required = true, num_args = 1.., trailing_var_arg = true,
              allow_hyphen_values = true, value_parser = clap::value_parser!(OsString))]
        command: Vec<OsString>,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CredentialFormat {
    /// Shell `export` lines.
    Env,
    /// The AWS credential_process JSON document.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Generate a new secp256k1 wallet key, write it to FILE with mode 0600 and print its
    /// address.
    Generate {
        /// Where to write the key (0x followed by 64 hex digits).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,

        /// Replace FILE if it exists. The old key is lost.
        #[arg(long)]
        force: bool,
    },

    /// Print the address of a key file.
    Address {
        /// The key file.
        #[arg(long, value_name = "FILE")]
        key_file: PathBuf,
    },
}

/// Most pairing requests live 10 minutes at the broker; `--timeout` cannot usefully exceed an
/// hour.
const MAX_PAIR_TIMEOUT: u64 = 3600;
/// The same bound for sign-in and link requests.
const MAX_LOGIN_TIMEOUT: u64 = 3600;

/// How long to wait for the user to finish in the browser.
#[derive(Debug, Clone, Copy, Args)]
pub struct TimeoutArg {
    /// Give up after this many seconds without the code (or the provider's redirect back to
    /// this command).
    #[arg(long = "timeout", value_name = "SECONDS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..=MAX_LOGIN_TIMEOUT))]
    pub secs: u64,
}

/// How the one-time code of an email or OIDC sign-in (or link) reaches this command.
#[derive(Debug, Clone, Args)]
pub struct CodeArgs {
    /// Finish the sign-in (or link) this profile started last with this code, e.g. after the
    /// prompt was interrupted; nothing new is started.
    #[arg(long, value_name = "CODE")]
    pub code: Option<String>,

    #[command(flatten)]
    pub timeout: TimeoutArg,
}

/// A wallet signature that proves the signed-in master's wallet is at hand (linking).
#[derive(Debug, Clone, Args)]
pub struct StepUpArgs {
    /// The signed-in master's wallet key file: linking needs a fresh signature by it.
    #[arg(long, value_name = "FILE")]
    pub key_file: PathBuf,

    /// EIP-155 chain id placed in the message to sign.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub chain_id: u64,
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Create this agent's device key (secp256k1, mode 0600) and print its address. The key
    /// proves the device's identity when pairing; it never leaves the machine.
    Init {
        /// Where to write the key (default: device.key in the profile's directory).
        #[arg(long, value_name = "FILE")]
        key_file: Option<PathBuf>,

        /// Replace an existing key. The old key is lost (the agent paired with it keeps working
        /// until its session ends, but cannot pair again).
        #[arg(long)]
        force: bool,
    },

    /// Pair this device with a master: open a pairing request, show a code for the master to
    /// approve, and wait for the approval. The agent session is saved in the profile.
    ///
    /// The code is printed on stderr; the master runs `agentkeys agents approve CODE --label
    /// NAME`. On approval, the agent's omni and label are printed on stdout.
    Pair {
        /// The device key (default: device.key in the profile's directory, from `agentkeys
        /// agent init`).
        #[arg(long, value_name = "FILE")]
        key_file: Option<PathBuf>,

        /// Give up after this many seconds without approval.
        #[arg(long, value_name = "SECONDS", default_value_t = 600,
              value_parser = clap::value_parser!(u64).range(1..=MAX_PAIR_TIMEOUT))]
        timeout: u64,

        /// Print the result as JSON (never includes the session token).
        #[arg(long)]
        json: bool,
    },

    /// Get a new session for an agent that is already paired (its session expired or was
    /// logged out), proving the device key. The agent keeps its identity and its prefix.
    Login {
        /// The device key the agent was paired with (default: device.key in the profile's
        /// directory).
        #[arg(long, value_name = "FILE")]
        key_file: Option<PathBuf>,

        /// The agent's omni (default: the agent of the profile's saved session).
        #[arg(long, value_name = "AGENT_OMNI")]
        agent: Option<String>,

        /// Print the result as JSON (never includes the session token).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    /// Approve the pairing code an agent shows, naming the new agent. The label is part of the
    /// agent's identity (its omni and S3 prefix) and is never reused.
    Approve {
        /// The code shown by `agentkeys agent pair`, e.g. ABCD-EFGH (case and dash optional).
        #[arg(value_name = "CODE")]
        code: String,

        /// The agent's label: 1-32 characters of a-z, 0-9 and '-', unique among your agents.
        #[arg(long, value_name = "NAME")]
        label: String,

        /// Print the new agent as JSON.
        #[arg(long)]
        json: bool,
    },

    /// List your agents, including suspended and removed ones.
    List {
        /// Print the broker's JSON answer.
        #[arg(long)]
        json: bool,
    },

    /// Suspend an agent: its next mint is refused until it is resumed.
    Suspend {
        #[command(flatten)]
        target: AgentTarget,
    },

    /// Resume a suspended agent.
    Resume {
        #[command(flatten)]
        target: AgentTarget,
    },

    /// Remove an agent for good: its sessions end at once and its label cannot be reused.
    Remove {
        #[command(flatten)]
        target: AgentTarget,
    },
}

#[derive(Debug, Clone, Args)]
pub struct AgentTarget {
    /// The agent: its omni (64 hex digits) or its label.
    #[arg(value_name = "AGENT_OMNI_OR_LABEL")]
    pub agent: String,

    /// Print the agent's new state as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// List the live sessions of the signed-in actor; the current one is marked.
    List {
        /// Print the broker's JSON answer.
        #[arg(long)]
        json: bool,
    },

    /// Revoke one session by its id (from `agentkeys sessions list`). Revoking the current
    /// session also deletes it locally.
    Revoke {
        #[arg(value_name = "ID")]
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum LoginCommand {
    /// Sign in with a wallet key: the broker's EIP-4361 (SIWE) message is signed with EIP-191
    /// personal_sign.
    Wallet {
        /// Key file written by `agentkeys key generate` (must be mode 0600).
        #[arg(long, value_name = "FILE")]
        key_file: PathBuf,

        /// EIP-155 chain id placed in the sign-in message.
        #[arg(long, value_name = "N", default_value_t = 1,
              value_parser = clap::value_parser!(u64).range(1..))]
        chain_id: u64,

        /// Print the result as JSON (never includes the session token).
        #[arg(long)]
        json: bool,
    },

    /// Sign in by email: the broker mails a one-time code to ADDRESS; type it at the prompt
    /// and the session is saved here.
    ///
    /// An address linked to a wallet master (`agentkeys identities link-email`) signs in as that
    /// master; any other address is a master of its own, without a wallet.
    Email {
        /// The email address to send the code to.
        #[arg(value_name = "ADDRESS")]
        address: String,

        #[command(flatten)]
        code: CodeArgs,

        /// Print the result as JSON (never includes the session token).
        #[arg(long)]
        json: bool,
    },

    /// Sign in with an OpenID Connect provider configured on the broker: open the printed URL
    /// in a browser on this machine and sign in there; the broker sends the browser back to
    /// this command (RFC 8252 loopback redirect) and the session is saved here.
    Oidc {
        /// The provider's name on the broker (e.g. google).
        #[arg(value_name = "PROVIDER")]
        provider: String,

        /// For a browser on another machine: the broker shows a code to type at the prompt
        /// instead of redirecting to this machine.
        #[arg(long)]
        no_browser: bool,

        #[command(flatten)]
        code: CodeArgs,

        /// Print the result as JSON (never includes the session token).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum IdentitiesCommand {
    /// List the identities linked to the signed-in master.
    List {
        /// Print the broker's JSON answer.
        #[arg(long)]
        json: bool,
    },

    /// Link an email address to the signed-in wallet master: after a fresh signature by the
    /// master's wallet, the broker mails a code to ADDRESS; type it at the prompt.
    LinkEmail {
        /// The email address to link.
        #[arg(value_name = "ADDRESS")]
        address: String,

        #[command(flatten)]
        step_up: StepUpArgs,

        #[command(flatten)]
        code: CodeArgs,

        /// Print the linked identity as JSON.
        #[arg(long)]
        json: bool,
    },

    /// Link an account at an OpenID Connect provider to the signed-in wallet master: after a
    /// fresh signature by the master's wallet, open the printed URL in a browser and sign in
    /// there.
    LinkOidc {
        /// The provider's name on the broker (e.g. google).
        #[arg(value_name = "PROVIDER")]
        provider: String,

        #[command(flatten)]
        step_up: StepUpArgs,

        /// For a browser on another machine: the broker shows a code to type at the prompt.
        #[arg(long)]
        no_browser: bool,

        #[command(flatten)]
        code: CodeArgs,

        /// Print the linked identity as JSON.
        #[arg(long)]
        json: bool,
    },

    /// Unlink an identity: signing in with it afterwards makes a separate master again, and the
    /// sessions obtained through it are revoked.
    Unlink {
        /// The identity's type, as listed: email or oauth2_<provider>.
        #[arg(value_name = "TYPE")]
        identity_type: String,

        /// The identity's value, as listed (the address, or the provider's subject).
        #[arg(value_name = "VALUE")]
        identity_value: String,
    },
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
