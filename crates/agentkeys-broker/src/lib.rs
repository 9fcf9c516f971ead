//! The AgentKeys broker as a library: `main` only parses the command line and calls in here,
//! and tests drive the same functions with a port-0 listener.

pub mod agents;
pub mod checkpoint;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod data_dir;
pub mod http;
pub mod keys;
pub mod mailer;
pub mod metrics;
pub mod mint;
pub mod oidc_login;
pub mod policy;
pub mod session;
pub mod state;
pub mod wallet;

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
    let store = agentkeys_store::open(&settings.database_url)
        .await
        .with_context(|| format!("opening the store {}", settings.database_url))?;
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
    let state = AppState::new(settings, store, clock, mailer, oidc);
    let now = state.clock.now();
    let problems = state.keys.reload(state.store.as_ref(), now).await?;
    for p in &problems {
        tracing::error!(error = %p, "keys.load_failed");
    }
    if state.keys.current().signer(now).is_none() {
        if state.settings.dev && state.keys.current().lifecycle.records().is_empty() {
            let key = keys::create(
                state.store.as_ref(),
                &state.settings.data_dir,
                now,
                now,
                "key.generate",
            )
            .await?;
            tracing::warn!(kid = %key.kid, "keys.generated_for_dev");
            state.keys.reload(state.store.as_ref(), now).await?;
        } else {
            anyhow::bail!(
                "no active signing key in {}: run `agentkeys-broker keys generate --data-dir {}` (or pass --dev to generate one)",
                keys::key_dir(&state.settings.data_dir).display(),
                state.settings.data_dir.display()
            );
        }
    }
    Ok(state)
}

/// Reloads keys and purges expired rows in the background.
pub fn spawn_maintenance(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick =
            tokio::time::interval(Duration::from_secs(state.settings.key_refresh_seconds));
        tick.tick().await;
        let mut last_purge = state.clock.now();
        loop {
            tick.tick().await;
            let now = state.clock.now();
            match state.keys.reload(state.store.as_ref(), now).await {
                Ok(problems) => problems
                    .iter()
                    .for_each(|p| tracing::error!(error = %p, "keys.load_failed")),
                Err(e) => tracing::error!(error = %e, "keys.reload_failed"),
            }
            if now - last_purge >= 3600 {
                last_purge = now;
                // A day of grace keeps recently expired sessions explainable.
                if let Err(e) = state.store.purge_expired(now - 86_400).await {
                    tracing::error!(error = %e, "store.purge_failed");
                }
            }
        }
    })
}

/// Runs `serve` with the system clock until SIGINT / SIGTERM.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let listen = settings.listen;
    let state = prepare(settings, Arc::new(SystemClock)).await?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let maintenance = spawn_maintenance(state.clone());
    tracing::info!(
        listen = %listener.local_addr()?,
        issuer = %state.settings.issuer.url,
        dev = state.settings.dev,
        "broker.listening"
    );
    http::serve(listener, state, shutdown_signal()).await?;
    maintenance.abort();
    tracing::info!("broker.stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
