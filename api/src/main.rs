//! `cairn-api`: serves the HTTP API on `CAIRN_LISTEN` until Ctrl-C/SIGTERM.

use cairn_shared::Config;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    cairn_shared::telemetry::init();
    let config = Config::from_env()?;
    let shutdown = CancellationToken::new();
    let app = cairn_api::Application::start(&config, shutdown.clone()).await?;
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        shutdown.cancel();
    });
    app.wait().await
}

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
