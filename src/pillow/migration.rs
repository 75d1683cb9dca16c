//! The dedicated migration process (CommCare's `--dedicated-migration-process`): it consumes
//! nothing and only runs `bootstrap_if_needed` at an interval.

use tokio_util::sync::CancellationToken;

use crate::error::Result;

use super::{Pillow, RunSummary, StopReason};

impl Pillow {
    /// The dedicated migration process: consumes nothing, calls `bootstrap_if_needed` on every
    /// processor about every `bootstrap_interval`, until stopped.
    pub(super) async fn run_migration_process(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Result<RunSummary> {
        tracing::info!(pillow = %self.config.name, "dedicated migration process: consuming nothing, bootstrapping processors");
        if let Some(l) = &self.liveness {
            l.register(
                &self.config.name,
                &self.config.checkpoint_id,
                &self.config.layout,
                &[],
            )
            .await?;
        }
        let result: Result<StopReason> = async {
            loop {
                for p in &mut self.processors {
                    p.bootstrap_if_needed().await?;
                }
                if let Some(l) = &self.liveness {
                    if let Err(e) = l
                        .heartbeat(
                            &self.config.name,
                            0,
                            &crate::store::liveness::ProcessorStats::new(),
                        )
                        .await
                    {
                        tracing::warn!(error = %e, "could not refresh the heartbeat");
                    }
                }
                if self.config.until_idle {
                    return Ok(StopReason::Idle);
                }
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(StopReason::Shutdown),
                    () = tokio::time::sleep(self.config.bootstrap_interval) => {}
                }
            }
        }
        .await;
        if let Some(l) = &self.liveness {
            let _ = l.unregister(&self.config.name, 0).await;
        }
        Ok(RunSummary::nothing(result?))
    }
}
