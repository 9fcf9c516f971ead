//! The one error type of the client. Every variant renders as a single line that says what went
//! wrong and what to do next; `main` prints it on stderr and exits with [`Error::exit_code`].

use std::path::PathBuf;

/// Exit status for a generic failure (bad input, I/O, a broker refusal).
pub const EXIT_FAILURE: i32 = 1;
/// Exit status when the user has to sign in (again).
pub const EXIT_LOGIN_REQUIRED: i32 = 3;
/// Exit status when the broker could not be reached.
pub const EXIT_UNREACHABLE: i32 = 4;
/// Exit status when the broker rate-limited the request.
pub const EXIT_RATE_LIMITED: i32 = 5;
/// Exit status when the cloud (STS or S3) refused a request or could not be reached.
pub const EXIT_CLOUD: i32 = 6;
/// Exit status of `verify-isolation` when the check ran and isolation does not hold.
pub const EXIT_ISOLATION_FAILED: i32 = 7;
/// Exit status of `exec` when the command exists but cannot be run (as in POSIX shells).
pub const EXIT_CANNOT_EXECUTE: i32 = 126;
/// Exit status of `exec` when the command is not found (as in POSIX shells).
pub const EXIT_COMMAND_NOT_FOUND: i32 = 127;

/// The command to suggest whenever a session is missing or rejected.
pub const LOGIN_HINT: &str = "agentkeys login wallet --key-file <FILE>";

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No TCP connection or no HTTP answer from the broker.
    #[error(
        "cannot reach the broker at {url}: {detail}; check that it is running, or point the client \
         at it with --broker-url or AGENTKEYS_BROKER_URL"
    )]
    BrokerUnreachable { url: String, detail: String },

    /// The broker answered with something that is not the documented API.
    #[error(
        "unexpected answer from the broker at {url}: {detail}; is AGENTKEYS_BROKER_URL an AgentKeys broker?"
    )]
    BrokerProtocol { url: String, detail: String },

    /// There is no session saved for this profile. `agent`: the profile holds a device key, so
    /// the advice is to pair rather than to sign in.
    #[error("not signed in: profile `{profile}` has no saved session; run `{hint}` again", hint = login_hint(profile, *agent))]
    NotLoggedIn { profile: String, agent: bool },

    /// The broker answered 401 to the saved session. `agent`: it was an agent's session.
    #[error(
        "the broker no longer accepts the saved {what}session of profile `{profile}` ({why}); run \
         `{hint}` again", hint = login_hint(profile, *agent),
        what = if *agent { "agent " } else { "" },
        why = if *agent { "expired or revoked; if its master removed the agent, pair a new one with `agentkeys agent pair`" } else { "expired, revoked or unknown" }
    )]
    SessionRejected { profile: String, agent: bool },

    /// The saved session was issued by another broker than the one selected now. The token is
    /// not sent anywhere else.
    #[error(
        "the saved session of profile `{profile}` belongs to the broker at {saved}, not {requested}; \
         run `{hint}` against {requested}, or use another --profile", hint = login_hint(profile, false)
    )]
    SessionForOtherBroker {
        profile: String,
        saved: String,
        requested: String,
    },

    /// The CLI refused to sign a sign-in message: it is not for the broker the CLI talks to,
    /// for this key and chain, or valid now (see [`crate::siwe_check`]).
    #[error("refusing to sign the sign-in message from the broker at {url}: {reason}")]
    SiweRefused { url: String, reason: SiweRefusal },

    /// A broker URL that would carry bearer tokens in clear text over a network.
    #[error(
        "refusing to talk to the broker at {url}: plain http off loopback sends sessions and \
         tokens in clear text; use its https:// URL, or pass --insecure-http \
         (AGENTKEYS_INSECURE_HTTP=1) only on a network you trust"
    )]
    InsecureBrokerUrl { url: String },

    /// The discovery document names another issuer than the URL it was fetched from (OpenID
    /// Connect Discovery §4.3): a device proof for it would be valid at another broker.
    #[error(
        "the server at {url} says it is the broker {issuer}: a broker names its own URL, so this \
         one may be relaying another broker; refusing to sign device proofs for it (use the \
         broker's own URL)"
    )]
    ForeignIssuer { url: String, issuer: String },

    /// The broker's issuer is not the one the agent profile was paired with.
    #[error(
        "profile `{profile}` was paired with the broker {pinned}, but {url} is the broker \
         {found}; its device key signs proofs only for the broker it was paired with. To move \
         this agent there, pair it again: `agentkeys {flag}--broker-url {url} agent pair`",
        flag = profile_flag(profile)
    )]
    IssuerChanged {
        profile: String,
        url: String,
        pinned: String,
        found: String,
    },

    /// 429 from the broker.
    #[error("the broker is rate limiting this account; {}", retry_text(.retry_after))]
    RateLimited { retry_after: Option<RetryAfter> },

    /// Any other error answer from the broker, with its own message (and advice for the kinds
    /// that have an obvious next step).
    #[error("the broker refused the request ({status} {kind}): {message}{hint}", hint = broker_hint(kind))]
    Broker {
        status: u16,
        kind: String,
        message: String,
    },

    /// `agentkeys agent pair` ended without a session (timed out, expired, already delivered).
    #[error("pairing did not complete: {0}")]
    Pairing(String),

    /// `agentkeys login email|oidc` ended without a session (timed out, expired, collected).
    #[error("sign-in did not complete: {0}")]
    SignIn(String),

    /// An access request ended without a grant (denied, expired), or could not be decided.
    #[error("no grant: {0}")]
    AccessRequest(String),

    /// `agentkeys identities link-*` ended without a link (timed out, expired, linked elsewhere).
    #[error("linking did not complete: {0}")]
    Linking(String),

    #[error("{path} already exists; pass --force to overwrite it (the old key is lost)")]
    KeyFileExists { path: PathBuf },

    #[error(
        "{path} is readable by group or others (mode {mode:03o}); run `chmod 600 {path}` and try again",
        path = .path.display()
    )]
    InsecurePermissions { path: PathBuf, mode: u32 },

    #[error("{path} is not a key file: {reason}", path = .path.display())]
    InvalidKeyFile { path: PathBuf, reason: String },

    #[error("saved state {path} is unreadable: {reason}; delete it and sign in again", path = .path.display())]
    CorruptState { path: PathBuf, reason: String },

    #[error("cannot {action} {path}: {source}", path = .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A value given on the command line or in the environment is not usable.
    #[error("{0}")]
    InvalidInput(String),

    #[error("could not sign the sign-in message: {0}")]
    Signing(String),

    /// STS answered `AssumeRoleWithWebIdentity` with an error. Error codes are shown when there
    /// are some but never relied on: Ceph RGW answers every refusal with a bare 403.
    #[error(
        "STS at {endpoint} refused AssumeRoleWithWebIdentity for {role_arn} ({detail}); {hint}likely \
         causes: the broker's issuer is not registered as an OIDC provider in that account (or the \
         provider's client IDs lack the token's audience), the role's trust policy does not match \
         the token (Federated principal, aud/sub conditions), the trust policy lacks \
         sts:TagSession, or the role ARN is wrong; see docs/cloud-setup.md",
        hint = sts_hint(.code.as_deref(), .message.as_deref())
    )]
    StsRefused {
        endpoint: String,
        role_arn: String,
        /// HTTP status, code and message of the answer, as one short text.
        detail: String,
        code: Option<String>,
        message: Option<String>,
    },

    /// No usable answer from STS or S3 (connection failed, timed out, unreadable reply).
    #[error(
        "cannot reach {service} at {endpoint}: {detail}; check the network, or the endpoint given \
         with {flag}"
    )]
    CloudUnreachable {
        service: &'static str,
        endpoint: String,
        flag: &'static str,
        detail: String,
    },

    /// `verify-isolation` ran and the verdict is FAIL.
    #[error("isolation check failed: {0}")]
    IsolationFailed(String),

    /// `exec` could not start the command.
    #[error("cannot run `{program}`: {source}; check the command name and PATH")]
    Exec {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// Process exit status for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::NotLoggedIn { .. }
            | Error::SessionRejected { .. }
            | Error::SessionForOtherBroker { .. } => EXIT_LOGIN_REQUIRED,
            Error::BrokerUnreachable { .. } => EXIT_UNREACHABLE,
            Error::RateLimited { .. } => EXIT_RATE_LIMITED,
            Error::StsRefused { .. } | Error::CloudUnreachable { .. } => EXIT_CLOUD,
            Error::IsolationFailed(_) => EXIT_ISOLATION_FAILED,
            Error::Exec { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                EXIT_COMMAND_NOT_FOUND
            }
            Error::Exec { .. } => EXIT_CANNOT_EXECUTE,
            _ => EXIT_FAILURE,
        }
    }
}

/// The value of a `Retry-After` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryAfter {
    Seconds(u64),
    /// An HTTP date, kept verbatim.
    Date(String),
}

impl RetryAfter {
    pub fn parse(raw: &str) -> Option<Self> {
        let raw = raw.trim();
        if raw.is_empty() {
            return None;
        }
        match raw.parse::<u64>() {
            Ok(n) => Some(Self::Seconds(n)),
            Err(_) if raw.len() <= 64 && raw.chars().all(|c| c.is_ascii_graphic() || c == ' ') => {
                Some(Self::Date(raw.to_owned()))
            }
            Err(_) => None,
        }
    }
}

fn retry_text(retry_after: &Option<RetryAfter>) -> String {
    match retry_after {
        Some(RetryAfter::Seconds(1)) => "retry in 1 second".to_owned(),
        Some(RetryAfter::Seconds(n)) => format!("retry in {n} seconds"),
        Some(RetryAfter::Date(d)) => format!("retry after {d}"),
        None => "wait a minute and retry".to_owned(),
    }
}

/// A first, more specific cause when STS named one (AWS does; RGW does not).
fn sts_hint(code: Option<&str>, message: Option<&str>) -> &'static str {
    let message = message.unwrap_or_default();
    match code.unwrap_or_default() {
        "ExpiredTokenException" => {
            "the broker's token had expired when STS checked it (is this machine's clock right?); "
        }
        "IDPCommunicationError" => {
            "STS could not fetch the broker's discovery document or JWKS from the issuer URL \
             (it must be reachable from the cloud over https); "
        }
        "IDPRejectedClaim" => "the identity provider rejected a claim of the token; ",
        "ValidationError" if message.contains("DurationSeconds") => {
            "--duration is longer than the role's maximum session duration; "
        }
        "RegionDisabledException" => "STS is not activated in this region (try --region); ",
        _ => "",
    }
}

/// Largest sign-in message this client agrees to sign (named in [`SiweRefusal::TooLong`]).
pub(crate) const MAX_SIWE_MESSAGE: usize = 8 * 1024;

/// Why a SIWE message was not signed (the checks are in `crate::siwe_check`). Each reason says what differs from what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SiweRefusal {
    #[error("the message is longer than {MAX_SIWE_MESSAGE} bytes")]
    TooLong,
    #[error("it is not an EIP-4361 sign-in message ({0})")]
    NotSiwe(String),
    #[error("it is not laid out exactly as EIP-4361 writes it")]
    NotCanonical,
    #[error(
        "it signs in to the domain {found}, not to {expected} (the host of the broker URL); the \
         server at that URL may be relaying another broker's sign-in: use the broker's own URL"
    )]
    Domain { expected: String, found: String },
    #[error("its URI {found} is not on the broker URL's origin {expected}")]
    Uri { expected: String, found: String },
    #[error("it is for chain id {found}, not {expected} (--chain-id)")]
    ChainId { expected: u64, found: u64 },
    #[error("it is for the address {found}, not this key's {expected}")]
    Address { expected: String, found: String },
    #[error("it was issued at {issued_at}, in the future; check this computer's clock")]
    IssuedInFuture { issued_at: String },
    #[error("it only becomes valid at {not_before}; check this computer's clock")]
    NotYetValid { not_before: String },
    #[error("it has no expiration time, so the signature would never expire")]
    NoExpiration,
    #[error("it expired at {expires_at}; check this computer's clock and sign in again")]
    Expired { expires_at: String },
    #[error("it stays valid until {expires_at}, more than an hour from now")]
    TooLongLived { expires_at: String },
}

/// `--profile NAME ` unless it is the default profile.
fn profile_flag(profile: &str) -> String {
    if profile == crate::DEFAULT_PROFILE {
        String::new()
    } else {
        format!("--profile {profile} ")
    }
}

/// The command that gets the profile a session again: sign in for a master; for an agent, a new
/// session by device proof.
fn login_hint(profile: &str, agent: bool) -> String {
    let global = profile_flag(profile);
    if agent {
        format!("agentkeys {global}agent login")
    } else if global.is_empty() {
        LOGIN_HINT.to_owned()
    } else {
        format!("agentkeys {global}login wallet --key-file <FILE>")
    }
}

/// Next step for broker refusals whose kind says what to do.
fn broker_hint(kind: &str) -> &'static str {
    use agentkeys_types::ErrorKind as K;
    match K::parse(kind) {
        K::AgentSuspended => "; its master can resume it with `agentkeys agents resume <LABEL>`",
        K::AgentRemoved => {
            "; this agent was removed by its master: pair a new one with `agentkeys agent pair`"
        }
        K::WalletMasterOnly => {
            "; sign in with the wallet key (`agentkeys login wallet --key-file <FILE>`) to link or \
             unlink identities"
        }
        K::GrantRevoked | K::GrantExpired | K::GrantExhausted | K::GrantUnavailable => {
            "; ask the master for a new grant (`agentkeys grants create`), or mint without --grant"
        }
        K::GrantUnknown | K::GrantNotYours => {
            "; `agentkeys grants list` in the agent's profile shows the grants it was given"
        }
        K::MastersOnly => {
            "; this profile holds an agent's session: use a master's profile (--profile NAME)"
        }
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_errors_name_the_login_command() {
        let e = Error::SessionRejected {
            profile: "default".into(),
            agent: false,
        };
        let s = e.to_string();
        assert!(
            s.contains("run `agentkeys login wallet --key-file <FILE>` again"),
            "{s}"
        );
        assert_eq!(e.exit_code(), EXIT_LOGIN_REQUIRED);

        let e = Error::NotLoggedIn {
            profile: "work".into(),
            agent: false,
        };
        assert!(
            e.to_string()
                .contains("agentkeys --profile work login wallet --key-file")
        );
    }

    #[test]
    fn agent_errors_say_pair_and_resume() {
        let e = Error::SessionRejected {
            profile: "bot".into(),
            agent: true,
        };
        let s = e.to_string();
        assert!(
            s.contains("agent session") && s.contains("master removed the agent"),
            "{s}"
        );
        assert!(
            s.contains("run `agentkeys --profile bot agent login` again")
                && s.contains("agent pair"),
            "{s}"
        );
        assert_eq!(e.exit_code(), EXIT_LOGIN_REQUIRED);
        let e = Error::Broker {
            status: 403,
            kind: "agent_suspended".into(),
            message: "this agent cannot mint (agent_suspended); ask its master".into(),
        };
        assert!(e.to_string().contains("agentkeys agents resume"), "{e}");
        let e = Error::Broker {
            status: 403,
            kind: "masters_only".into(),
            message: "only a master".into(),
        };
        assert!(e.to_string().contains("--profile"), "{e}");
    }

    #[test]
    fn rate_limit_says_when_to_retry() {
        let e = Error::RateLimited {
            retry_after: RetryAfter::parse("42"),
        };
        assert_eq!(
            e.to_string(),
            "the broker is rate limiting this account; retry in 42 seconds"
        );
        assert_eq!(e.exit_code(), EXIT_RATE_LIMITED);
        let e = Error::RateLimited {
            retry_after: RetryAfter::parse("Wed, 21 Oct 2015 07:28:00 GMT"),
        };
        assert!(
            e.to_string()
                .ends_with("retry after Wed, 21 Oct 2015 07:28:00 GMT")
        );
        let e = Error::RateLimited { retry_after: None };
        assert!(e.to_string().contains("retry"));
    }

    #[test]
    fn retry_after_rejects_garbage() {
        assert_eq!(RetryAfter::parse(""), None);
        assert_eq!(RetryAfter::parse("\u{7}bell"), None);
        assert_eq!(RetryAfter::parse(" 7 "), Some(RetryAfter::Seconds(7)));
    }

    #[test]
    fn unreachable_names_url_and_env() {
        let e = Error::BrokerUnreachable {
            url: "http://127.0.0.1:1".into(),
            detail: "connection refused".into(),
        };
        let s = e.to_string();
        assert!(
            s.contains("http://127.0.0.1:1") && s.contains("AGENTKEYS_BROKER_URL"),
            "{s}"
        );
        assert_eq!(e.exit_code(), EXIT_UNREACHABLE);
    }

    #[test]
    fn permission_error_says_chmod() {
        let e = Error::InsecurePermissions {
            path: "/tmp/k".into(),
            mode: 0o644,
        };
        assert_eq!(
            e.to_string(),
            "/tmp/k is readable by group or others (mode 644); run `chmod 600 /tmp/k` and try again"
        );
    }

    #[test]
    fn sts_refusal_names_the_likely_causes_without_a_code() {
        // Ceph RGW: a bare 403, no error code (FINDINGS quirk 6).
        let e = Error::StsRefused {
            endpoint: "http://127.0.0.1:17480".into(),
            role_arn: "arn:aws:iam:::role/r".into(),
            detail: "HTTP 403, no error code".into(),
            code: None,
            message: None,
        };
        let s = e.to_string();
        for needle in [
            "http://127.0.0.1:17480",
            "arn:aws:iam:::role/r",
            "HTTP 403",
            "OIDC provider",
            "trust policy",
            "sts:TagSession",
            "role ARN is wrong",
        ] {
            assert!(s.contains(needle), "{needle}: {s}");
        }
        assert_eq!(e.exit_code(), EXIT_CLOUD);

        // A code, when there is one, adds a first cause.
        let e = Error::StsRefused {
            endpoint: "e".into(),
            role_arn: "r".into(),
            detail: "HTTP 400 ValidationError".into(),
            code: Some("ValidationError".into()),
            message: Some("The requested DurationSeconds exceeds the MaxSessionDuration".into()),
        };
        assert!(e.to_string().contains("--duration is longer"), "{e}");
    }

    #[test]
    fn exec_errors_use_shell_exit_codes() {
        let e = Error::Exec {
            program: "nope".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert_eq!(e.exit_code(), EXIT_COMMAND_NOT_FOUND);
        assert!(e.to_string().contains("`nope`"), "{e}");
        let e = Error::Exec {
            program: "x".into(),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        assert_eq!(e.exit_code(), EXIT_CANNOT_EXECUTE);
        assert_eq!(
            Error::IsolationFailed("x".into()).exit_code(),
            EXIT_ISOLATION_FAILED
        );
    }

    #[test]
    fn every_message_is_one_line() {
        let all = [
            Error::BrokerUnreachable {
                url: "u".into(),
                detail: "d".into(),
            },
            Error::BrokerProtocol {
                url: "u".into(),
                detail: "d".into(),
            },
            Error::NotLoggedIn {
                profile: "p".into(),
                agent: true,
            },
            Error::SessionRejected {
                profile: "p".into(),
                agent: true,
            },
            Error::Pairing("x".into()),
            Error::SignIn("x".into()),
            Error::Linking("x".into()),
            Error::SessionForOtherBroker {
                profile: "p".into(),
                saved: "a".into(),
                requested: "b".into(),
            },
            Error::RateLimited { retry_after: None },
            Error::Broker {
                status: 403,
                kind: "agent_suspended".into(),
                message: "no".into(),
            },
            Error::KeyFileExists { path: "k".into() },
            Error::InvalidKeyFile {
                path: "k".into(),
                reason: "r".into(),
            },
            Error::CorruptState {
                path: "s".into(),
                reason: "r".into(),
            },
            Error::StsRefused {
                endpoint: "e".into(),
                role_arn: "r".into(),
                detail: "HTTP 403".into(),
                code: Some("ExpiredTokenException".into()),
                message: None,
            },
            Error::CloudUnreachable {
                service: "STS",
                endpoint: "e".into(),
                flag: "--sts-endpoint",
                detail: "d".into(),
            },
            Error::IsolationFailed("x".into()),
            Error::SiweRefused {
                url: "u".into(),
                reason: SiweRefusal::Domain {
                    expected: "a".into(),
                    found: "b".into(),
                },
            },
            Error::InsecureBrokerUrl { url: "u".into() },
            Error::ForeignIssuer {
                url: "u".into(),
                issuer: "i".into(),
            },
            Error::IssuerChanged {
                profile: "p".into(),
                url: "u".into(),
                pinned: "a".into(),
                found: "b".into(),
            },
            Error::Exec {
                program: "p".into(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            },
        ];
        for e in all {
            assert!(!e.to_string().contains('\n'), "{e}");
        }
    }
}
