//! This process as one instance among several (CONTRACT §10): it joins
//! under its `INSTANCE_ID`, writes a heartbeat every
//! `INSTANCE_HEARTBEAT_SECS`, says when it drains, and leaves on a clean
//! exit, so the others know at once that it is gone.

use crate::metrics::Metrics;
use crate::store::{InstanceInfo, InstanceStore, Joined, StoreError};
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Why this process could not join.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// A live process holds the id: two processes with one id would each
    /// take the other's claims for their own.
    #[error(
        "configuration error: INSTANCE_ID: {id:?} is in use by a live process \
         (last heartbeat {last_seen_at}); give each process its own INSTANCE_ID"
    )]
    InUse {
        /// The id asked for.
        id: String,
        /// The holder's last heartbeat.
        last_seen_at: DateTime<Utc>,
    },
    /// The database could not be asked.
    #[error("registering the instance: {0}")]
    Store(#[from] StoreError),
}

/// This process's row in `instances`, and its draining state.
pub struct Membership {
    store: Arc<dyn InstanceStore>,
    info: InstanceInfo,
    draining: AtomicBool,
    beat_now: Notify,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("info", &self.info)
            .field("draining", &self.is_draining())
            .finish_non_exhaustive()
    }
}

impl Membership {
    /// Joins as `id`, refused while a live process holds it.
    pub async fn join(
        store: Arc<dyn InstanceStore>,
        id: &str,
        incarnation: Uuid,
        heartbeat: Duration,
        max_concurrent_files: usize,
    ) -> Result<Arc<Self>, JoinError> {
        let info = InstanceInfo {
            instance_id: id.to_string(),
            incarnation,
            version: env!("CARGO_PKG_VERSION").to_string(),
            heartbeat,
            max_concurrent_files,
        };
        match store.join(&info).await? {
            Joined::Yes => {
                tracing::info!(instance = id, incarnation = %info.incarnation, "joined");
                Ok(Arc::new(Self {
                    store,
                    info,
                    draining: AtomicBool::new(false),
                    beat_now: Notify::new(),
                }))
            }
            Joined::InUse { last_seen_at } => Err(JoinError::InUse {
                id: id.to_string(),
                last_seen_at,
            }),
        }
    }

    /// `INSTANCE_ID`.
    pub fn id(&self) -> &str {
        &self.info.instance_id
    }

    /// This process (claims and run work name it).
    pub fn incarnation(&self) -> Uuid {
        self.info.incarnation
    }

    /// True once SIGTERM came.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// From now on this instance takes no new work; the others hear of it
    /// with the next heartbeat, sent at once.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.beat_now.notify_one();
    }

    /// Writes the heartbeat until `done`; when the row turns out to be
    /// another process's (this one was presumed dead and its id taken),
    /// cancels `lost`, since this process's claims are no longer its own.
    pub fn spawn_heartbeat(
        self: &Arc<Self>,
        metrics: Arc<Metrics>,
        done: CancellationToken,
        lost: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(me.info.heartbeat);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    biased;
                    _ = done.cancelled() => break,
                    _ = me.beat_now.notified() => {}
                    _ = tick.tick() => {}
                }
                let beat = me
                    .store
                    .heartbeat(
                        me.info.incarnation,
                        metrics.files_in_flight(),
                        me.is_draining(),
                    )
                    .await;
                match beat {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::error!(
                            instance = me.id(),
                            "this instance's row belongs to another process now (it was presumed dead); stopping"
                        );
                        lost.cancel();
                        break;
                    }
                    Err(e) => tracing::warn!(error = %e, "heartbeat not written; trying again"),
                }
            }
        })
    }

    /// Marks the clean exit (best effort: otherwise three heartbeats tell).
    pub async fn leave(&self) {
        match self.store.leave(self.info.incarnation).await {
            Ok(()) => tracing::info!(instance = self.id(), "left"),
            Err(e) => {
                tracing::warn!(error = %e, "could not mark the instance stopped; the others see it dead after three heartbeats")
            }
        }
    }
}
