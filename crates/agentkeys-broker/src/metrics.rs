//! Prometheus metrics through the `metrics` facade. Names:
//!
//! * `agentkeys_mints_total{outcome}` — `ok` or `denied`
//! * `agentkeys_mint_denials_total{reason}`
//! * `agentkeys_mint_duration_seconds` — histogram, request start to response
//! * `agentkeys_audit_writes_total{outcome}` — every audit event this process appended: `ok`
//!   committed, `failed` lost with a batch that could not commit (counted by the store's writer)
//! * `agentkeys_sign_ins_total{method, outcome}`
//! * `agentkeys_anonymous_denials_total{kind}` — refusals aggregated into `anonymous.denied`
//! * `agentkeys_rate_limited_total{limiter, scope}` — 429s of the in-memory limiters
//!
//! `/metrics` itself may require a bearer token ([`MetricsToken`]).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use secrecy::{ExposeSecret, SecretString};

pub const MINTS: &str = "agentkeys_mints_total";
pub const MINT_DENIALS: &str = "agentkeys_mint_denials_total";
pub const MINT_DURATION: &str = "agentkeys_mint_duration_seconds";
pub const AUDIT_WRITES: &str = "agentkeys_audit_writes_total";
pub const SIGN_INS: &str = "agentkeys_sign_ins_total";
pub const ANONYMOUS_DENIALS: &str = "agentkeys_anonymous_denials_total";
pub const RATE_LIMITED: &str = "agentkeys_rate_limited_total";

/// The process-wide recorder, installed on first use (a process has one `metrics` recorder).
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(MINT_DURATION.to_owned()),
                    &[
                        0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
                    ],
                )
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; the handle still renders.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

pub fn mint_denied(reason: &crate::mint::DenyReason) {
    metrics::counter!(MINTS, "outcome" => "denied").increment(1);
    metrics::counter!(MINT_DENIALS, "reason" => reason.as_str()).increment(1);
}

/// The bearer token `/metrics` requires (`BROKER_METRICS_TOKEN`), checked for length when parsed.
/// Never printed: its `Debug` is `secrecy`'s redacted one.
#[derive(Clone, Debug)]
pub struct MetricsToken(SecretString);

impl MetricsToken {
    /// The shortest token accepted: 128 bits as hex or base64 is longer than this.
    pub const MIN_LEN: usize = 16;

    pub fn new(token: &str) -> Result<Self, String> {
        let token = token.trim();
        if token.len() < Self::MIN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "use at least {} printable characters without spaces, e.g. `openssl rand -hex 32`",
                Self::MIN_LEN
            ));
        }
        Ok(Self(SecretString::from(token)))
    }

    /// Whether `presented` is the token, in time independent of where they differ: both sides
    /// are hashed first, so neither the content nor the length leaks through timing.
    pub fn matches(&self, presented: &str) -> bool {
        use sha2::{Digest, Sha256};
        let a = Sha256::digest(self.0.expose_secret().as_bytes());
        let b = Sha256::digest(presented.as_bytes());
        aws_lc_rs::constant_time::verify_slices_are_equal(&a, &b).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::MetricsToken;

    #[test]
    fn metrics_tokens_are_long_compared_whole_and_never_printed() {
        assert!(MetricsToken::new("short").is_err());
        assert!(MetricsToken::new("has a space in it!!").is_err());
        let t = MetricsToken::new("0123456789abcdef0123").expect("valid");
        assert!(t.matches("0123456789abcdef0123"));
        assert!(!t.matches("0123456789abcdef012"));
        assert!(!t.matches("0123456789abcdef01234"));
        assert!(!t.matches(""));
        assert!(!format!("{t:?}").contains("0123"));
    }
}
