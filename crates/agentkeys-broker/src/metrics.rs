//! Prometheus metrics through the `metrics` facade. Names:
//!
//! * `agentkeys_mints_total{outcome}` — `ok` or `denied`
//! * `agentkeys_mint_denials_total{reason}`
//! * `agentkeys_mint_duration_seconds` — histogram, request start to response
//! * `agentkeys_audit_writes_total{outcome}`
//! * `agentkeys_sign_ins_total{method, outcome}`
//! * `agentkeys_anonymous_denials_total{kind}` — refusals aggregated into `anonymous.denied`
//! * `agentkeys_rate_limited_total{limiter, scope}` — 429s of the in-memory limiters

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

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

pub fn mint_denied(reason: &'static str) {
    metrics::counter!(MINTS, "outcome" => "denied").increment(1);
    metrics::counter!(MINT_DENIALS, "reason" => reason).increment(1);
}

