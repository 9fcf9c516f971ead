//! Application state shared by every handler.

use std::ops::Deref;
use std::sync::Arc;

use agentkeys_store::Store;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::clock::Clock;
use crate::config::Settings;
use crate::denials::Denials;
use crate::keys::KeyRing;
use crate::limiter::Limiter;
use crate::mailer::Mailer;
use crate::session_cache::SessionCache;

/// Cheap to clone; everything lives behind one `Arc`.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub settings: Settings,
    /// All persistence (sessions, challenges, rate limits, audit, key records).
    pub store: Arc<dyn Store>,
    /// The only source of wall time.
    pub clock: Arc<dyn Clock>,
    pub keys: KeyRing,
    pub metrics: PrometheusHandle,
    /// Delivers sign-in links; `None` when email sign-in is off.
    pub mailer: Option<Arc<dyn Mailer>>,
    /// OpenID Connect providers by name, discovered at start-up.
    pub oidc: std::collections::HashMap<String, Arc<crate::oidc_login::OidcProvider>>,
    /// In front of every unauthenticated route (SPEC §11.9).
    pub anonymous_limiter: Limiter,
    /// In front of pairing approvals, per client IP whatever master signs them.
    pub approve_limiter: Limiter,
    /// Refused anonymous requests, written to the audit log in aggregate.
    pub denials: Denials,
    /// Sessions the mint has seen live (their unchanging facts only).
    pub mint_sessions: SessionCache,
}

impl AppState {
    pub fn new(
        settings: Settings,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        mailer: Option<Arc<dyn Mailer>>,
        oidc: std::collections::HashMap<String, Arc<crate::oidc_login::OidcProvider>>,
        vault: crate::keys::Vault,
    ) -> Self {
        let keys = KeyRing::new(vault);
        let anonymous_limiter = Limiter::new(settings.anonymous_limits);
        let approve_limiter = Limiter::new(settings.approve_limits);
        Self(Arc::new(Inner {
            settings,
            store,
            clock,
            keys,
            metrics: crate::metrics::handle(),
            mailer,
            oidc,
            anonymous_limiter,
            approve_limiter,
            denials: Denials::default(),
            mint_sessions: SessionCache::default(),
        }))
    }
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}
