//! The process around a long-running command (`controller`, `agent`, `dev`): logging,
//! systemd notifications, and the signals that stop it.

use anyhow::Context;

/// Logs to stderr, filtered by RUST_LOG (default: `default`).
pub fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Tells systemd (Type=notify units) how the service is doing; a no-op outside systemd.
pub fn notify_systemd(state: sd_notify::NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(&[state]) {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r.context("installing the SIGINT handler")?,
    }
    Ok(())
}
