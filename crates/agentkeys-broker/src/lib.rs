//! The AgentKeys broker as a library: `main` only parses the command line and calls in here,
//! and tests drive the same functions with a port-0 listener.

pub mod access;
pub mod agents;
pub mod checkpoint;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod data_dir;
pub mod denials;
pub mod gate;
pub mod http;
pub mod keys;
pub mod limiter;
pub mod limits;
pub mod mailer;
pub mod metrics;
pub mod mint;
pub mod oidc_login;
pub mod policy;
pub mod session;
pub mod session_cache;
pub mod sign_in;
pub mod state;
pub mod tls;
pub mod wallet;

use agentkeys_types::audit::AuditKind;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::clock::{Clock, SystemClock};
use crate::config::Settings;
use crate::state::AppState;

/// Opens the store, prepares keys and returns the state `serve` runs with.
pub async fn prepare(settings: Settings, clock: Arc<dyn Clock>) -> anyhow::Result<AppState> {
    data_dir::ensure(&settings.data_dir).context("the data dir (BROKER_DATA_DIR)")?;
    // The settings registry refuses these too; this covers settings built in code.
    oidc_login::check_provider_names(&settings.oidc_providers)
        .context("BROKER_OIDC_PROVIDERS_FILE")?;
    let vault = keys::Vault::new(
        &settings.data_dir,
        settings.key_encryption_key_file.as_deref(),
    )?;
    let store = agentkeys_store::open(&settings.database_url)
        .await
        .with_context(|| {
            format!(
                "opening the store {}",
                agentkeys_store::redact_url(&settings.database_url)
            )
        })?;
    let mailer: Option<Arc<dyn mailer::Mailer>> = match &settings.email {
        None => None,
        Some(config::EmailDelivery::Log) => Some(Arc::new(mailer::LogMailer)),
        Some(config::EmailDelivery::Smtp(smtp)) => Some(Arc::new(
            mailer::SmtpMailer::new(smtp).context("configuring SMTP (BROKER_SMTP_*)")?,
        )),
    };
    let mut oidc = std::collections::HashMap::new();
    if !settings.oidc_providers.is_empty() {
        let http = oidc_login::http_client()?;
        let redirect = format!("{}/auth/oidc/callback", settings.issuer.url);
        for config in &settings.oidc_providers {
            let name = config.name.clone();
            let provider = oidc_login::OidcProvider::discover(config.clone(), &redirect, &http)
                .await
                .with_context(|| format!("OIDC provider {name:?} (BROKER_OIDC_PROVIDERS_FILE)"))?;
            oidc.insert(name, Arc::new(provider));
        }
    }
    let state = AppState::new(settings, store, clock, mailer, oidc, vault);
    let now = state.clock.now();
    let problems = state.keys.reload(state.store.as_ref(), now).await?;
    for p in &problems {
        tracing::error!(error = %p, "keys.load_failed");
    }
    if state.keys.current().signer(now).is_none() {
        if state.settings.dev && state.keys.current().lifecycle.records().is_empty() {
            let key = keys::create(
                state.store.as_ref(),
                state.keys.vault(),
                now,
                now,
                AuditKind::KeyGenerate,
            )
            .await?;
            tracing::warn!(kid = %key.kid, "keys.generated_for_dev");
            state.keys.reload(state.store.as_ref(), now).await?;
        } else {
            anyhow::bail!(
                "no active signing key in the store: run `agentkeys-broker keys generate` with the \
                 same data dir, database URL and key-encryption key (or pass --dev to generate one)"
            );
        }
    }
    Ok(state)
}

/// How often expired challenges, pairing requests and login requests are deleted: they are
/// written by anonymous callers, so they must not pile up (SPEC §11.5, §11.9).
pub const PURGE_EVERY_SECONDS: i64 = 60;
/// Expired sessions are kept this long after expiry, so recent ones stay explainable.
pub const SESSION_GRACE_SECONDS: i64 = 86_400;

/// The background chores, each run when due: key reload, purge of expired rows, and the flush
/// of aggregated anonymous denials to the audit log.
pub struct Maintenance {
    state: AppState,
    last_key_reload: i64,
    last_purge: i64,
    last_flush: i64,
}

impl Maintenance {
    pub fn new(state: AppState) -> Self {
        let now = state.clock.now();
        Self {
            state,
            last_key_reload: now,
            last_purge: now,
            last_flush: now,
        }
    }

    /// How often [`Maintenance::tick`] should run to meet every period.
    pub fn period(&self) -> Duration {
        let s = &self.state.settings;
        let secs = s
            .key_refresh_seconds
            .min(s.anon_audit_window_seconds)
            .min(PURGE_EVERY_SECONDS as u64)
            .max(1);
        Duration::from_secs(secs)
    }

    /// Does whatever is due at the clock's current time.
    pub async fn tick(&mut self) {
        let state = &self.state;
        // Histogram samples pile up in the recorder until drained; a scrape drains them, but a
        // broker nobody scrapes grew by every mint's sample (found by the soak).
        state.metrics.run_upkeep();
        let now = state.clock.now();
        if now - self.last_key_reload >= state.settings.key_refresh_seconds as i64 {
            self.last_key_reload = now;
            match state.keys.reload(state.store.as_ref(), now).await {
                Ok(problems) => problems
                    .iter()
                    .for_each(|p| tracing::error!(error = %p, "keys.load_failed")),
                Err(e) => tracing::error!(error = %e, "keys.reload_failed"),
            }
        }
        if now - self.last_purge >= PURGE_EVERY_SECONDS {
            self.last_purge = now;
            purge_expired(state).await;
        }
        if now - self.last_flush >= state.settings.anon_audit_window_seconds as i64 {
            self.last_flush = now;
            flush_denials(state).await;
        }
    }
}

/// Deletes expired challenges, pairing and login requests at once, and sessions after their
/// grace period.
pub async fn purge_expired(state: &AppState) {
    let now = state.clock.now();
    let purging = state
        .store
        .transact(move |tx| tx.purge_expired(now, now - SESSION_GRACE_SECONDS));
    match purging.await {
        Ok(n) if n > 0 => tracing::debug!(rows = n, "store.purged"),
        Ok(_) => {}
        Err(e) => tracing::error!(error = %e, "store.purge_failed"),
    }
}

/// Writes the aggregated anonymous denials; what fails stays counted for the next flush.
pub async fn flush_denials(state: &AppState) {
    if let Err(e) = state.denials.flush(&state.store, state.clock.now()).await {
        tracing::error!(error = %e, pending = state.denials.pending(), "audit.denials_flush_failed");
    }
}

/// Runs [`Maintenance`] in the background.
pub fn spawn_maintenance(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut chores = Maintenance::new(state);
        let mut tick = tokio::time::interval(chores.period());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            chores.tick().await;
        }
    })
}

/// Runs `serve` with the system clock until SIGINT / SIGTERM.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let listen = settings.listen;
    // Signals are caught from before the port accepts anything: a TERM that arrives while the
    // store is being prepared is answered with a graceful stop once serving starts.
    let shutdown = shutdown_signal();
    // The ports first: a broker that cannot listen must not create a database or a key first.
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let metrics_listener = match settings.metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics listener {addr}"))?,
        ),
        None => None,
    };
    let state = prepare(settings, Arc::new(SystemClock)).await?;
    // The metrics listener stops when the main one has drained (the sender is dropped).
    let (stop_metrics, metrics_stopped) = tokio::sync::watch::channel(());
    let metrics_server = match metrics_listener {
        Some(metrics_listener) => {
            tracing::info!(listen = %metrics_listener.local_addr()?, "broker.metrics_listening");
            let mut stopped = metrics_stopped.clone();
            Some(tokio::spawn(http::serve_metrics(
                metrics_listener,
                state.clone(),
                async move {
                    let _ = stopped.changed().await;
                },
            )))
        }
        None => None,
    };
    if !state.settings.dev
        && state.settings.metrics_token.is_none()
        && state.settings.metrics_listen.is_none()
    {
        tracing::warn!(
            exposure = "/metrics is served to anyone who reaches --listen",
            fix = "set BROKER_METRICS_TOKEN or BROKER_METRICS_LISTEN",
            "metrics.open"
        );
    }
    let maintenance = spawn_maintenance(state.clone());
    tracing::info!(
        listen = %listener.local_addr()?,
        issuer = %state.settings.issuer.url,
        dev = state.settings.dev,
        "broker.listening"
    );
    http::serve(listener, state.clone(), shutdown).await?;
    drop(stop_metrics);
    if let Some(server) = metrics_server {
        let _ = server.await;
    }
    maintenance.abort();
    // Nothing counted is lost at shutdown.
    flush_denials(&state).await;
    tracing::info!("broker.stopped");
    Ok(())
}

/// Resolves at SIGINT or SIGTERM. The handlers are installed when this is called, not when the
/// future is first polled, so a signal that arrives as soon as the port accepts is not lost.
fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let interrupt = signal(SignalKind::interrupt()).ok();
    let terminate = signal(SignalKind::terminate()).ok();
    async move {
        let wait = |s: Option<tokio::signal::unix::Signal>| async move {
            match s {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! { () = wait(interrupt) => {}, () = wait(terminate) => {} }
    }
}
