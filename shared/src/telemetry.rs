//! Structured logs for every binary: `CAIRN_LOG` filters (EnvFilter syntax),
//! `CAIRN_LOG_FORMAT=json` switches to one JSON object per line. Logs go to
//! stderr, as a service's should; colours only on a terminal.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Installs the global subscriber; call once at the top of `main`.
pub fn init() {
    let filter = EnvFilter::try_from_env("CAIRN_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("CAIRN_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let registry = tracing_subscriber::registry().with(filter);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    if json {
        registry
            .with(fmt::layer().json().with_current_span(true).with_span_list(false).with_writer(std::io::stderr))
            .init();
    } else {
        registry.with(fmt::layer().with_target(false).with_ansi(ansi).with_writer(std::io::stderr)).init();
    }
}
