//! The HTTP API: a thin layer that validates requests, records jobs with
//! their outbox entries in one transaction, and answers from PostgreSQL.
//! It never runs a job; workers do.

pub mod auth;
pub mod error;
mod extract;
pub mod quota;
mod routes;
pub mod submit;
pub mod tokens;
mod views;

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context;
use axum::{Router, extract::DefaultBodyLimit};
use cairn_shared::{Config, config::AuthMode, outbox::Nudge, queue::Broker};
use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;
use tower_http::trace::{DefaultMakeSpan, TraceLayer};

/// Largest request body accepted; Trove's bodies are a few hundred bytes.
const BODY_LIMIT: usize = 64 * 1024;

/// The OpenAPI document of every route (also served at `/openapi.json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes::routes().1
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub db: DatabaseConnection,
    /// Directories volume instances may live in.
    pub volume_roots: Vec<PathBuf>,
    /// Where restores go when no path is given.
    pub default_volume_dir: PathBuf,
    /// Wakes the outbox relay after a commit.
    pub nudge: Nudge,
    /// Whether requests need a token.
    pub auth: AuthMode,
    /// Per-project limits on backups.
    pub quotas: quota::Quotas,
    /// Tokens verified in the last `CAIRN_TOKEN_CACHE_SECONDS`.
    pub tokens: std::sync::Arc<tokens::TokenCache>,
    /// Records `POST /backups` in batches (group commit).
    pub submits: submit::Submitter,
}

/// The API's routes over `state`.
///
/// Layers, outermost first: the HTTP trace (method, path, status, latency;
/// headers are not recorded, so `X-Auth-Token` never reaches a log), the
/// token check ([`auth`]), then the body limit the JSON extractor applies.
pub fn router(state: AppState) -> Router {
    let trace = TraceLayer::new_for_http().make_span_with(DefaultMakeSpan::new().include_headers(false));
    routes::routes()
        .0
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::require_token))
        .layer(trace)
        .with_state(state)
}

/// A running API: its address and the task serving it.
pub struct Application {
    /// The bound address (port 0 resolved).
    pub addr: SocketAddr,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    relay: tokio::task::JoinHandle<()>,
    /// For what is left to do once both have stopped.
    db: DatabaseConnection,
    /// The relay's hand-over, which requests answered during shutdown
    /// may still have filled.
    nudge: Nudge,
}

impl Application {
    /// Connects, migrates, binds `config.listen` and starts serving and
    /// relaying the outbox until `shutdown` fires.
    pub async fn start(config: &Config, shutdown: CancellationToken) -> anyhow::Result<Self> {
        config.check_auth_exposure()?;
        let db = cairn_shared::db::connect_and_migrate(&config.database_url).await?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let addr = listener.local_addr()?;
        let nudge = Nudge::default();
        let broker = Broker::new(&config.amqp_url, &config.queue_prefix);
        let relay = tokio::spawn(cairn_shared::outbox::run_relay(db.clone(), broker, nudge.clone(), shutdown.clone()));
        let quotas = quota::Quotas { backups: config.quota_backups, bytes: config.quota_bytes };
        let state = AppState {
            submits: submit::Submitter::start(db.clone(), quotas, nudge.clone()),
            db,
            volume_roots: config.volume_roots.clone(),
            default_volume_dir: config.default_volume_dir(),
            nudge,
            auth: config.auth,
            quotas,
            tokens: std::sync::Arc::new(tokens::TokenCache::new(config.token_cache)),
        };
        let (state_db, state_nudge) = (state.db.clone(), state.nudge.clone());
        let app = router(state);
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
                .context("HTTP server failed")
        });
        tracing::info!(%addr, auth = %config.auth, "cairn-api listening");
        Ok(Self { addr, server, relay, db: state_db, nudge: state_nudge })
    }

    /// Waits until the server has stopped.
    pub async fn wait(self) -> anyhow::Result<()> {
        let served = self.server.await.context("HTTP server task panicked")?;
        let _ = self.relay.await;
        // Requests answered after the relay stopped handed it their
        // entries: give those to the other processes' relays now.
        cairn_shared::outbox::release_unpublished(&self.db, &self.nudge).await;
        served
    }
}
