//! The shared work of runs (CONTRACT §10) in Postgres: the plan on the
//! `runs` row and one `run_work` row per candidate, taken by any live
//! instance with `FOR UPDATE SKIP LOCKED`, so no instance waits on
//! another's lock and each candidate has one holder at a time.

use async_trait::async_trait;
use serde_json::Value;
use uuid::Uuid;

use super::postgres::Step;
use super::{ActiveRun, PgStore, StoreError, TakenWork, WorkStore};
use crate::domain::FileReport;
use crate::plan::Group;
use crate::plan::duplicates::CopyPlace;

fn decode<T: serde::de::DeserializeOwned>(v: Value, what: &'static str) -> Result<T, StoreError> {
    serde_json::from_value(v)
        .map_err(|e| StoreError::Unavailable(format!("a stored {what} could not be read: {e}")))
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Value, StoreError> {
    serde_json::to_value(v)
        .map_err(|e| StoreError::Unavailable(format!("could not encode the run's work: {e}")))
}

#[async_trait]
impl WorkStore for PgStore {
    async fn add_work(
        &self,
        run_id: Uuid,
        plan: &Value,
        work: &[(i32, Group)],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await.step("starting a transaction")?;
        sqlx::query("UPDATE runs SET plan = $2 WHERE id = $1")
            .bind(run_id)
            .bind(plan)
            .execute(&mut *tx)
            .await
            .step("storing the run's plan")?;
        let (mut seqs, mut remitters, mut ranks, mut items) = (vec![], vec![], vec![], vec![]);
        let (mut classes, mut positions) = (vec![], vec![]);
        for (seq, (rank, g)) in work.iter().enumerate() {
            seqs.push(i32::try_from(seq).unwrap_or(i32::MAX));
            remitters.push(g.newest.remitter.to_lowercase());
            ranks.push(*rank);
            items.push(encode(g)?);
            classes.push(g.copies.as_ref().map(|c| c.class.clone()));
            positions.push(g.copies.as_ref().map(|c| c.pos));
        }
        sqlx::query(
            "INSERT INTO run_work (run_id, seq, remitter, rank, item, copy_class, copy_pos) \
             SELECT $1, * FROM unnest($2::int[], $3::text[], $4::int[], $5::jsonb[], $6::text[], $7::int[])",
        )
        .bind(run_id)
        .bind(&seqs)
        .bind(&remitters)
        .bind(&ranks)
        .bind(&items)
        .bind(&classes)
        .bind(&positions)
        .execute(&mut *tx)
        .await
        .step("storing the run's candidates")?;
        // Fresh statistics: without them the planner sorts every candidate
        // of the run at each take instead of walking the ordered index.
        sqlx::query("ANALYZE run_work")
            .execute(&mut *tx)
            .await
            .step("analyzing the run's candidates")?;
        tx.commit().await.step("committing the run's work")?;
        Ok(())
    }

    async fn active_run(&self) -> Result<Option<ActiveRun>, StoreError> {
        let row: Option<(Uuid, bool, bool, bool)> = sqlx::query_as(
            "SELECT r.id, r.owner IS NOT NULL AND coordinator_alive(r.owner), r.plan IS NOT NULL, \
               EXISTS (SELECT 1 FROM run_work w WHERE w.run_id = r.id AND (w.state = 'pending' \
                 OR (w.state = 'taken' AND NOT coordinator_alive(w.taken_by)))) \
             FROM runs r WHERE r.status = 'running' AND NOT r.dry_run",
        )
        .fetch_optional(self.pool())
        .await
        .step("looking for a run in progress")?;
        Ok(
            row.map(|(run_id, owner_alive, planned, takeable)| ActiveRun {
                run_id,
                owner_alive,
                planned,
                takeable,
            }),
        )
    }

    async fn adopt_run(
        &self,
        run_id: Uuid,
        owner: Uuid,
    ) -> Result<Option<Option<Value>>, StoreError> {
        let adopted: Option<Option<Value>> = sqlx::query_scalar(
            "UPDATE runs SET owner = $2 WHERE id = $1 AND status = 'running' \
               AND (owner IS NULL OR NOT coordinator_alive(owner)) RETURNING plan",
        )
        .bind(run_id)
        .bind(owner)
        .fetch_optional(self.pool())
        .await
        .step("adopting the run")?;
        Ok(adopted)
    }

    async fn hand_over(&self, run_id: Uuid, owner: Uuid) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE runs SET owner = NULL WHERE id = $1 AND owner = $2 AND status = 'running'",
        )
        .bind(run_id)
        .bind(owner)
        .execute(self.pool())
        .await
        .step("handing the run over")?
        .rows_affected();
        Ok(n == 1)
    }

    async fn take_work(
        &self,
        run_id: Uuid,
        holder: Uuid,
        limit: i64,
    ) -> Result<Vec<TakenWork>, StoreError> {
        let rows: Vec<(i32, Value, bool)> = sqlx::query_as(
            "WITH next AS (SELECT seq, state = 'taken' AS taken_over FROM run_work \
               WHERE run_id = $1 AND (state = 'pending' \
                 OR (state = 'taken' AND taken_by IS DISTINCT FROM $2 AND NOT coordinator_alive(taken_by))) \
               ORDER BY rank, remitter, seq LIMIT $3 FOR UPDATE SKIP LOCKED) \
             UPDATE run_work w SET state = 'taken', taken_by = $2, taken_at = now(), \
               takeovers = w.takeovers + CASE WHEN next.taken_over THEN 1 ELSE 0 END \
             FROM next WHERE w.run_id = $1 AND w.seq = next.seq \
             RETURNING w.seq, w.item, next.taken_over",
        )
        .bind(run_id)
        .bind(holder)
        .bind(limit)
        .fetch_all(self.pool())
        .await
        .step("taking the run's candidates")?;
        let mut taken = rows
            .into_iter()
            .map(|(seq, item, taken_over)| {
                Ok(TakenWork {
                    seq,
                    group: decode(item, "candidate")?,
                    taken_over,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        // UPDATE … RETURNING keeps no order: take them in the fair order.
        taken.sort_by_key(|t| t.seq);
        Ok(taken)
    }

    async fn complete_work(
        &self,
        run_id: Uuid,
        holder: Uuid,
        instance: &str,
        reports: &[(i32, FileReport)],
    ) -> Result<Vec<i32>, StoreError> {
        let seqs: Vec<i32> = reports.iter().map(|(s, _)| *s).collect();
        let bodies = reports
            .iter()
            .map(|(_, r)| encode(r))
            .collect::<Result<Vec<Value>, StoreError>>()?;
        sqlx::query_scalar(
            "UPDATE run_work w SET state = 'done', report = r.report, instance = $3 \
             FROM unnest($4::int[], $5::jsonb[]) AS r(seq, report) \
             WHERE w.run_id = $1 AND w.seq = r.seq AND w.taken_by = $2 AND w.state = 'taken' \
             RETURNING w.seq",
        )
        .bind(run_id)
        .bind(holder)
        .bind(instance)
        .bind(&seqs)
        .bind(&bodies)
        .fetch_all(self.pool())
        .await
        .step("recording candidates' reports")
    }

    async fn release_work(
        &self,
        run_id: Uuid,
        holder: Uuid,
        seq: Option<i32>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE run_work SET state = 'pending', taken_by = NULL, taken_at = NULL \
             WHERE run_id = $1 AND ($2::int IS NULL OR seq = $2) AND taken_by = $3 AND state = 'taken'",
        )
        .bind(run_id)
        .bind(seq)
        .bind(holder)
        .execute(self.pool())
        .await
        .step("giving a candidate back")?;
        Ok(())
    }

    async fn earlier_copies_elsewhere(
        &self,
        run_id: Uuid,
        place: &CopyPlace,
        holder: Uuid,
    ) -> Result<i64, StoreError> {
        sqlx::query_scalar(
            "SELECT count(*) FROM run_work WHERE run_id = $1 AND copy_class = $2 AND copy_pos < $3 \
               AND state = 'taken' AND taken_by IS DISTINCT FROM $4",
        )
        .bind(run_id)
        .bind(&place.class)
        .bind(place.pos)
        .bind(holder)
        .fetch_one(self.pool())
        .await
        .step("looking for earlier copies in flight")
    }

    async fn open_work(&self, run_id: Uuid) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT count(*) FROM run_work WHERE run_id = $1 AND state <> 'done'")
            .bind(run_id)
            .fetch_one(self.pool())
            .await
            .step("counting the run's open candidates")
    }

    async fn run_results(
        &self,
        run_id: Uuid,
    ) -> Result<Vec<(Group, Option<FileReport>)>, StoreError> {
        let rows: Vec<(Value, Option<Value>)> =
            sqlx::query_as("SELECT item, report FROM run_work WHERE run_id = $1 ORDER BY seq")
                .bind(run_id)
                .fetch_all(self.pool())
                .await
                .step("reading the run's reports")?;
        rows.into_iter()
            .map(|(item, report)| {
                Ok((
                    decode(item, "candidate")?,
                    report.map(|r| decode(r, "report")).transpose()?,
                ))
            })
            .collect()
    }

    async fn others_alive(&self, me: Uuid) -> Result<bool, StoreError> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM instances WHERE incarnation <> $1 AND NOT draining \
               AND coordinator_alive(incarnation))",
        )
        .bind(me)
        .fetch_one(self.pool())
        .await
        .step("looking for other live instances")
    }
}
