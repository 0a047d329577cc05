//! Instances and their heartbeats (CONTRACT §10). Liveness is decided in
//! SQL by the database's clock (`coordinator_alive`, migration 0009), so
//! the clocks of the hosts never matter.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::time::Duration;
use uuid::Uuid;

use super::postgres::Step;
use super::{PgStore, StoreError};

/// What an instance says of itself when it joins.
#[derive(Debug, Clone)]
pub struct InstanceInfo {
    /// `INSTANCE_ID`.
    pub instance_id: String,
    /// This process: new at every start, so a restarted process never
    /// inherits a dead one's claims as live.
    pub incarnation: Uuid,
    /// The coordinator's version.
    pub version: String,
    /// `INSTANCE_HEARTBEAT_SECS`.
    pub heartbeat: Duration,
    /// `MAX_CONCURRENT_FILES`.
    pub max_concurrent_files: usize,
}

/// The outcome of joining.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Joined {
    /// The row is this process's now.
    Yes,
    /// A live process holds the id.
    InUse {
        /// Its last heartbeat.
        last_seen_at: DateTime<Utc>,
    },
}

/// One instance as `GET /api/v1/coordinator/instances` shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct InstanceView {
    /// `INSTANCE_ID`.
    pub instance_id: String,
    /// Its coordinator version.
    pub version: String,
    /// When its process started.
    pub started_at: DateTime<Utc>,
    /// Its last heartbeat.
    pub last_seen_at: DateTime<Utc>,
    /// Heard from within three heartbeats and not stopped.
    pub alive: bool,
    /// Its `MAX_CONCURRENT_FILES`.
    pub max_concurrent_files: i32,
    /// Files it held at its last heartbeat.
    pub files_in_flight: i32,
    /// True once it got SIGTERM: it takes no new work.
    pub draining: bool,
}

/// The instances table.
#[async_trait]
pub trait InstanceStore: Send + Sync {
    /// Takes the row of `me.instance_id` for this process, unless a live
    /// process holds it.
    async fn join(&self, me: &InstanceInfo) -> Result<Joined, StoreError>;
    /// Records a heartbeat; `false` when the row is no longer this
    /// process's (another process took the id after this one was presumed
    /// dead): this process must stop.
    async fn heartbeat(
        &self,
        incarnation: Uuid,
        files_in_flight: i64,
        draining: bool,
    ) -> Result<bool, StoreError>;
    /// Marks a clean exit: dead at once, without the three-beat wait.
    async fn leave(&self, incarnation: Uuid) -> Result<(), StoreError>;
    /// The instances heard from within `seen_within`, by id.
    async fn instances(&self, seen_within: Duration) -> Result<Vec<InstanceView>, StoreError>;
}

#[async_trait]
impl InstanceStore for PgStore {
    async fn join(&self, me: &InstanceInfo) -> Result<Joined, StoreError> {
        let took: Option<Uuid> = sqlx::query_scalar(
            "INSERT INTO instances (instance_id, incarnation, version, heartbeat_secs, max_concurrent_files) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (instance_id) DO UPDATE SET incarnation = EXCLUDED.incarnation, \
               version = EXCLUDED.version, started_at = now(), last_seen_at = now(), \
               heartbeat_secs = EXCLUDED.heartbeat_secs, \
               max_concurrent_files = EXCLUDED.max_concurrent_files, \
               files_in_flight = 0, draining = false, stopped_at = NULL \
             WHERE NOT coordinator_alive(instances.incarnation) \
             RETURNING incarnation",
        )
        .bind(&me.instance_id)
        .bind(me.incarnation)
        .bind(&me.version)
        .bind(me.heartbeat.as_secs_f64())
        .bind(i32::try_from(me.max_concurrent_files).unwrap_or(i32::MAX))
        .fetch_optional(self.pool())
        .await
        .step("registering the instance")?;
        if took.is_some() {
            return Ok(Joined::Yes);
        }
        let last_seen_at: DateTime<Utc> =
            sqlx::query_scalar("SELECT last_seen_at FROM instances WHERE instance_id = $1")
                .bind(&me.instance_id)
                .fetch_one(self.pool())
                .await
                .step("reading the instance that holds the id")?;
        Ok(Joined::InUse { last_seen_at })
    }

    async fn heartbeat(
        &self,
        incarnation: Uuid,
        files_in_flight: i64,
        draining: bool,
    ) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE instances SET last_seen_at = now(), files_in_flight = $2, draining = $3 \
             WHERE incarnation = $1 AND stopped_at IS NULL",
        )
        .bind(incarnation)
        .bind(i32::try_from(files_in_flight).unwrap_or(i32::MAX))
        .bind(draining)
        .execute(self.pool())
        .await
        .step("writing the heartbeat")?
        .rows_affected();
        Ok(n == 1)
    }

    async fn leave(&self, incarnation: Uuid) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE instances SET stopped_at = now(), files_in_flight = 0 WHERE incarnation = $1",
        )
        .bind(incarnation)
        .execute(self.pool())
        .await
        .step("marking the instance stopped")?;
        Ok(())
    }

    async fn instances(&self, seen_within: Duration) -> Result<Vec<InstanceView>, StoreError> {
        sqlx::query_as(
            "SELECT instance_id, version, started_at, last_seen_at, coordinator_alive(incarnation) AS alive, \
               max_concurrent_files, files_in_flight, draining \
             FROM instances WHERE last_seen_at > now() - make_interval(secs => $1) \
             ORDER BY instance_id",
        )
        .bind(seen_within.as_secs_f64())
        .fetch_all(self.pool())
        .await
        .step("listing the instances")
    }
}
