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

    /// There is no session saved for this profile.
    #[error("not signed in: profile `{profile}` has no saved session; run `{hint}` again", hint = login_hint(profile))]
    NotLoggedIn { profile: String },

    /// The broker answered 401 to the saved session.
    #[error(
        "the broker no longer accepts the saved session of profile `{profile}` (expired, revoked or \
         unknown); run `{hint}` again", hint = login_hint(profile)
    )]
    SessionRejected { profile: String },

    /// The saved session was issued by another broker than the one selected now. The token is
    /// not sent anywhere else.
    #[error(
        "the saved session of profile `{profile}` belongs to the broker at {saved}, not {requested}; \
         run `{hint}` against {requested}, or use another --profile", hint = login_hint(profile)
    )]
    SessionForOtherBroker {
        profile: String,
        saved: String,
        requested: String,
    },

    /// 429 from the broker.
    #[error("the broker is rate limiting this account; {}", retry_text(.retry_after))]
    RateLimited { retry_after: Option<RetryAfter> },

    /// Any other error answer from the broker, with its own message.
    #[error("the broker refused the request ({status} {kind}): {message}")]
    Broker {
        status: u16,
        kind: String,
        message: String,
    },

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

fn login_hint(profile: &str) -> String {
    if profile == crate::config::DEFAULT_PROFILE {
        LOGIN_HINT.to_owned()
    } else {
        format!("agentkeys --profile {profile} login wallet --key-file <FILE>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_errors_name_the_login_command() {
        let e = Error::SessionRejected {
            profile: "default".into(),
        };
        let s = e.to_string();
        assert!(
            s.contains("run `agentkeys login wallet --key-file <FILE>` again"),
            "{s}"
        );
        assert_eq!(e.exit_code(), EXIT_LOGIN_REQUIRED);

        let e = Error::NotLoggedIn {
            profile: "work".into(),
        };
        assert!(
            e.to_string()
                .contains("agentkeys --profile work login wallet --key-file")
        );
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
            },
            Error::SessionRejected {
                profile: "p".into(),
            },
            Error::SessionForOtherBroker {
                profile: "p".into(),
                saved: "a".into(),
                requested: "b".into(),
            },
            Error::RateLimited { retry_after: None },
            Error::Broker {
                status: 403,
                kind: "forbidden".into(),
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
        ];
        for e in all {
            assert!(!e.to_string().contains('\n'), "{e}");
        }
    }
}
