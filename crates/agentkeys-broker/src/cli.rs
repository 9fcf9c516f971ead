//! The `agentkeys-broker` command line: `serve`, `keys`, `audit`, `migrate`, `config-docs`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::ServeSettings;

/// AgentKeys broker: an OpenID Connect issuer that mints short-lived, cloud-isolated
/// credentials tokens for AI agents and the humans who own them.
#[derive(Debug, Parser)]
#[command(name = "agentkeys-broker", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// `Serve` carries every setting; the enum is built once per process, so its size is moot.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service.
    Serve(ServeSettings),
    /// Manage the ES256 signing keys (generate, list, rotate, retire).
    Keys {
        #[command(flatten)]
        store: StoreArgs,
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Inspect the audit log.
    Audit {
        #[command(flatten)]
        store: StoreArgs,
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Print the cloud-side documents that make the cloud trust this broker (docs/cloud-setup.md).
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Create or upgrade the database schema, then exit.
    Migrate {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Write a consistent copy of the SQLite store to a new file while the broker runs, then
    /// verify the copy's audit chain (PostgreSQL: use pg_dump).
    Backup {
        #[command(flatten)]
        store: StoreArgs,
        /// The new file (must not exist); created readable by its owner only.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Print docs/configuration.md, rendered from the settings registry.
    ConfigDocs,
}

/// Where the store and the key files live (same meaning as for `serve`).
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Directory holding broker.db and keys/.
    #[arg(
        long,
        env = "BROKER_DATA_DIR",
        default_value = "agentkeys-data",
        value_name = "DIR",
        global = true
    )]
    pub data_dir: PathBuf,
    /// Store URL; defaults to the SQLite file broker.db in the data dir.
    #[arg(long, env = "BROKER_DATABASE_URL", value_name = "URL", global = true)]
    pub database_url: Option<String>,
    /// The key-encryption key that seals signing keys in the store (as for `serve`).
    #[arg(
        long,
        env = "BROKER_KEY_ENCRYPTION_KEY_FILE",
        value_name = "FILE",
        global = true
    )]
    pub key_encryption_key_file: Option<PathBuf>,
}

impl StoreArgs {
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("broker.db").display()))
    }
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create the first signing key, active at once. Refuses if a key already signs: use rotate.
    Generate,
    /// List keys with their state and publication window.
    List,
    /// Add a new key that is published now and starts signing after the overlap; the current
    /// key keeps signing until then and stays published until its tokens have expired.
    Rotate {
        /// Seconds between publishing the new key and signing with it. Must exceed every
        /// verifier's JWKS cache time (AWS caches for up to an hour).
        #[arg(long, default_value_t = 3600)]
        overlap_seconds: u64,
    },
    /// Stop a key from signing now. It stays published until its tokens have expired, unless
    /// --immediately (a compromised key): then it leaves the JWKS at once and its tokens stop
    /// verifying.
    Retire {
        /// The key's kid (see `keys list`).
        kid: String,
        #[arg(long)]
        immediately: bool,
    },
    /// Re-seal every signing key kept in the store under a new key-encryption key, in one
    /// transaction. Afterwards, point BROKER_KEY_ENCRYPTION_KEY_FILE of every instance at the
    /// new file and restart them.
    RotateKek {
        /// The new key-encryption key (32 random bytes in base64, mode 0600).
        #[arg(long, value_name = "FILE")]
        new_key_file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute the hash chain from the first event; names the first bad event.
    Verify,
    /// Print events as NDJSON (one JSON object a line, oldest first) on stdout.
    Export {
        /// Only events with a larger seq.
        #[arg(long, value_name = "SEQ", default_value_t = 0)]
        after: u64,
    },
    /// Verify the chain and print a checkpoint of its head: a compact JWS signed with the active
    /// signing key over {kind, seq, head_hash, time}. Ship it off the box; `verify-checkpoint`
    /// checks it later against the public JWKS.
    Checkpoint,
    /// Check a checkpoint's signature against the broker's JWKS, then that the stored chain is
    /// intact and still has that hash at that seq (nothing rewritten or truncated).
    VerifyCheckpoint {
        /// The JWKS URL, e.g. https://broker.example/.well-known/jwks.json.
        #[arg(
            long,
            value_name = "URL",
            conflicts_with = "jwks_file",
            required_unless_present = "jwks_file"
        )]
        jwks_url: Option<String>,
        /// A file holding the JWKS.
        #[arg(long, value_name = "FILE")]
        jwks_file: Option<PathBuf>,
        /// File holding the checkpoint JWS; `-` for stdin.
        #[arg(value_name = "CHECKPOINT_FILE")]
        checkpoint: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// AWS (or an S3-compatible cloud): the OIDC provider registration, the role trust policy
    /// and the bucket policy, as JSON.
    Aws(PolicyAwsArgs),
}

#[derive(Debug, Clone, Args)]
pub struct PolicyAwsArgs {
    /// The broker's issuer URL, exactly as in its tokens.
    #[arg(long, env = "BROKER_ISSUER", value_name = "URL")]
    pub issuer: String,
    /// AWS account id (12 digits). Empty for account-less clouds such as Ceph RGW.
    #[arg(long, value_name = "ID")]
    pub account: String,
    /// The bucket whose prefixes the sessions get.
    #[arg(long, value_name = "NAME")]
    pub bucket: String,
    /// The role the clients assume.
    #[arg(long, value_name = "NAME")]
    pub role_name: String,
    /// Also allow the grant-scope prefix (`agentkeys_scope`), for agents minting under grants.
    #[arg(long)]
    pub with_grants: bool,
    /// The trust policy refuses sessions without a source identity (condition
    /// `sts:SourceIdentity`), so every session the role gives names its actor in CloudTrail.
    /// AWS only (needs --account).
    #[arg(long)]
    pub require_source_identity: bool,
    /// Write every tag value out instead of `${aws:PrincipalTag/…}` (for clouds that cannot
    /// substitute policy variables in resources, e.g. Ceph RGW 16): TAG=VALUE, repeatable.
    #[arg(long, value_name = "TAG=VALUE")]
    pub expand: Vec<String>,
    /// One JSON document on stdout instead of the annotated sections.
    #[arg(long)]
    pub json: bool,
    /// Also write provider.json, trust-policy.json and bucket-policy.json (compact) here.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}
