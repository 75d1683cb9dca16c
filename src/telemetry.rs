//! Logging setup: `tracing` to stderr, filtered by `PILLOWTOP_LOG` (default `info`); ANSI colour
//! only when stderr is a terminal and `NO_COLOR` is unset.

/// Installs the global subscriber once; later calls do nothing.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PILLOWTOP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(colour(std::io::IsTerminal::is_terminal(&std::io::stderr())))
        .try_init();
}

/// Colour codes only on a terminal, and never with `NO_COLOR` set to anything
/// (<https://no-color.org>).
fn colour(stderr_is_terminal: bool) -> bool {
    stderr_is_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
