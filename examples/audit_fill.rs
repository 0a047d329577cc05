//! Fills a migrated database with a history for the `verify` scenario of
//! `scripts/bench.sh` (CONTRACT §11: 1,000,000 events verify in < 60 s):
//!
//! `audit_fill DATABASE_URL EVENTS` (key in `AUDIT_KEY`) writes EVENTS / 3
//! `files` rows with SQL, then their events as the coordinator writes them
//! (`processing` bound to the version, `success` and `archive_succeeded`
//! bound to the file id), with MACs computed here, by COPY in transactions
//! of 10,000 rows, each followed by a sealing pass (so the chain has the
//! many small seals `serve` makes). Prints the seconds the fill and the
//! sealing took. Not a test.

use coordinator::store::AuditKey;
use coordinator::store::audit_chain::{FileBinding, file_event_mac, seal};
use sqlx::postgres::PgPoolOptions;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// Events per COPY (one transaction each) and per seal.
const CHUNK: i64 = 10_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, events] = &args[..] else {
        anyhow::bail!("usage: audit_fill DATABASE_URL EVENTS (AUDIT_KEY in the environment)");
    };
    let events: i64 = events.parse()?;
    let key = AuditKey::new(std::env::var("AUDIT_KEY")?.as_bytes())
        .map_err(|e| anyhow::anyhow!("AUDIT_KEY: {e}"))?;
    let pool = PgPoolOptions::new().max_connections(2).connect(url).await?;
    let files = (events + 2) / 3;
    let t = Instant::now();
    sqlx::query(
        "INSERT INTO files (id, remitter, file_name, base_name, md5, size, mtime, status, group_key, archived_at) \
         SELECT g, 'r' || lpad((g % 20)::text, 2, '0'), 'f' || g || '.csv', 'f' || g || '.csv', \
                lpad(to_hex(g), 32, '0'), 2048, now(), 'success', 'r/f' || g, now() \
         FROM generate_series(1, $1::bigint) g",
    )
    .bind(files)
    .execute(&pool)
    .await?;
    sqlx::query("SELECT setval('files_id_seq', $1)")
        .bind(files)
        .execute(&pool)
        .await?;
    let run_id = uuid::Uuid::new_v4();
    let mut conn = pool.acquire().await?;
    let mut sealing = Duration::ZERO;
    let mut n = 0;
    while n < events {
        let mut text = String::with_capacity(CHUNK as usize * 200);
        let end = (n + CHUNK).min(events);
        for e in n..end {
            let file = e / 3 + 1;
            let remitter = format!("r{:02}", file % 20);
            let file_name = format!("f{file}.csv");
            let md5 = format!("{file:032x}");
            let (status, detail, binding) = match e % 3 {
                0 => (
                    "processing",
                    serde_json::json!({"run_id": run_id}),
                    FileBinding::Version {
                        remitter: &remitter,
                        file_name: &file_name,
                        md5: &md5,
                    },
                ),
                1 => (
                    "success",
                    serde_json::json!({"run_id": run_id, "itm": {"status": 200}}),
                    FileBinding::Id(file),
                ),
                _ => (
                    "archive_succeeded",
                    serde_json::json!({"archive_path": format!("archive/{remitter}/{file_name}")}),
                    FileBinding::Id(file),
                ),
            };
            let mac = file_event_mac(&key, status, &detail, binding);
            // COPY text format: tabs between columns, `\\x` for a bytea's `\x`.
            writeln!(
                text,
                "{file}\t{status}\t{detail}\t\\\\x{}",
                hex::encode(mac)
            )?;
        }
        let mut copy = conn
            .copy_in_raw("COPY file_events (file_id, status, detail, mac) FROM STDIN")
            .await?;
        copy.send(text.into_bytes()).await?;
        copy.finish().await?;
        let s = Instant::now();
        seal(&pool, &key).await?;
        sealing += s.elapsed();
        n = end;
    }
    drop(conn);
    // The last COPY's transaction is below the horizon once it committed,
    // unless another transaction is open: seal until everything is.
    let s = Instant::now();
    loop {
        seal(&pool, &key).await?;
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM file_events WHERE (xid::text)::bigint >= \
               coalesce((SELECT max(xid_to) FROM audit_seals WHERE table_name = 'file_events'), 0)",
        )
        .fetch_one(&pool)
        .await?;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sealing += s.elapsed();
    // As autovacuum would have by then (the visibility map makes the
    // verification's scan cheaper).
    for table in ["file_events", "files"] {
        sqlx::raw_sql(&format!("VACUUM ANALYZE {table}"))
            .execute(&pool)
            .await?;
    }
    println!(
        "fill_s={:.3} seal_s={:.3}",
        (t.elapsed() - sealing).as_secs_f64(),
        sealing.as_secs_f64()
    );
    Ok(())
}
