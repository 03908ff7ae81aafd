//! `cairn-worker`: runs jobs until SIGTERM/Ctrl-C, then drains.

use cairn_shared::Config;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    cairn_shared::telemetry::init();
    let config = Config::from_env()?;
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutdown requested: finishing running jobs");
        signal.cancel();
    });
    cairn_worker::run(config, shutdown).await
}
