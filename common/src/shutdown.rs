//! Process lifecycle: one root [`CancellationToken`] and one [`TaskTracker`].
//!
//! SIGTERM or Ctrl-C cancels the token. Every component watches it, stops
//! taking new work, drains what it holds within its own budget and returns;
//! `main` then waits on the tracker. Nothing is left to `Drop`.

use std::time::Duration;

use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// The handles a component needs to take part in shutdown.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    /// Cancelled once when the process must stop; children are derived from it.
    pub token: CancellationToken,
    /// Tracks every long-lived task so `main` can wait for all of them.
    pub tracker: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels the token when SIGTERM or SIGINT arrives (or the token is
    /// cancelled some other way).
    pub fn cancel_on_signal(&self) {
        let token = self.token.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = wait_for_signal() => {
                    tracing::info!("shutdown signal received; draining");
                    token.cancel();
                }
                _ = token.cancelled() => {}
            }
        });
    }

    /// Closes the tracker and waits for every task, at most `budget`.
    /// Returns false when the budget ran out.
    pub async fn wait(&self, budget: Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(budget, self.tracker.wait())
            .await
            .is_ok()
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the process");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
