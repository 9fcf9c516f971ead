//! Command-line interface. The doc comments are the `--help` text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::DEFAULT_PROFILE;

/// AgentKeys client: sign in to an AgentKeys broker and mint short-lived OIDC tokens for cloud
/// federation.
#[derive(Debug, Parser)]
#[command(
    name = "agentkeys",
    version,
    propagate_version = true,
    after_help = "Exit status: 0 ok, 1 error, 2 usage error, 3 sign-in required, \
                  4 broker unreachable, 5 rate limited."
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

    /// End the saved session at the broker and delete it locally.
    Logout {
        /// Only delete the local session, without telling the broker (it then stays valid
        /// until it expires).
        #[arg(long)]
        local: bool,
    },

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

        /// Print the broker's JSON answer (jwt, expiration, wallet, actor_omni) instead of
        /// only the JWT.
        #[arg(long)]
        json: bool,
    },
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
