//! Times the operator's history pages over 1,000,000 `files` rows (CONTRACT
//! §9): fills a scratch database with `generate_series`, then times list
//! pages with and without filters, first and deep in the list, with the
//! indexes of `migrations/0006_operator.sql` and again without them.
//!
//! ```sh
//! envfile=$(scripts/test-env-up.sh) && . "$envfile"
//! cargo run --release --example history_bench      # DATABASE_URL: a server to create a database on
//! ```
//!
//! `BENCH_ROWS` changes the row count; the scratch database is dropped at the end.

use coordinator::store::{FileFilter, OperatorStore, PgStore, StatusFilter};
use sqlx::postgres::PgPoolOptions;
use std::time::{Duration, Instant};

const ROUNDS: usize = 15;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let admin_url = std::env::var("DATABASE_URL")?;
    let rows: i64 = std::env::var("BENCH_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let name = format!("history_bench_{}", uuid::Uuid::new_v4().simple());
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&admin_url)
        .await?;
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&admin)
        .await?;
    let mut url = reqwest::Url::parse(&admin_url)?;
    url.set_path(&format!("/{name}"));
    let result = bench(url.as_str(), rows).await;
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&admin)
        .await?;
    result
}

async fn bench(url: &str, rows: i64) -> anyhow::Result<()> {
    let pool = PgPoolOptions::new().max_connections(2).connect(url).await?;
    let store = PgStore::from_pool(pool.clone());
    store.migrate().await?;
    let t = Instant::now();
    // 200 remitters; 2 % itm_failed, ~1 % extraction_file_failed, 0.1 % ops_done.
    sqlx::query(
        "INSERT INTO files (remitter, file_name, base_name, md5, size, mtime, status, claimed_at, \
           updated_at, group_key, archived_at) \
         SELECT 'remitter' || (g % 200), 'Remit_' || g || '.csv', 'Remit_' || g || '.csv', md5(g::text), \
           1000 + g % 5000, now() - make_interval(secs => $1 - g), \
           CASE WHEN g % 50 = 0 THEN 'itm_failed' WHEN g % 97 = 0 THEN 'extraction_file_failed' \
                WHEN g % 1000 = 1 THEN 'ops_done' ELSE 'success' END, \
           now() - make_interval(secs => $1 - g), now() - make_interval(secs => $1 - g), \
           'remitter' || (g % 200) || '/remit_' || g || '.csv', now() \
         FROM generate_series(1, $1) g",
    )
    .bind(rows)
    .execute(&pool)
    .await?;
    sqlx::query(
        "INSERT INTO runs (id, status, trigger, instance, started_at, finished_at, summary) \
         SELECT gen_random_uuid(), 'completed', 'api', 'bench', now() - make_interval(mins => g), \
           now() - make_interval(mins => g), '{\"scanned\": 10, \"files\": []}' \
         FROM generate_series(1, 100000) g",
    )
    .execute(&pool)
    .await?;
    sqlx::query("ANALYZE").execute(&pool).await?;
    println!(
        "filled {rows} files and 100000 runs in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    measure(&store, rows, "with the 0006 indexes").await?;
    sqlx::query(
        "DROP INDEX files_by_remitter_id, files_by_status_id, files_failed, \
         files_by_remitter_status_id, files_failed_by_remitter, files_name_trgm",
    )
    .execute(&pool)
    .await?;
    measure(&store, rows, "without the 0006 indexes on files").await?;
    pool.close().await;
    Ok(())
}

async fn measure(store: &PgStore, rows: i64, what: &str) -> anyhow::Result<()> {
    println!("\n{what}: one page of 50, median / max of {ROUNDS} rounds");
    let filter =
        |remitter: Option<&str>, status: Option<StatusFilter>, q: Option<&str>| FileFilter {
            remitter: remitter.map(str::to_string),
            status,
            q: q.map(str::to_string),
        };
    let deep = Some(rows / 2);
    let cases: Vec<(&str, FileFilter, Option<i64>)> = vec![
        ("files, first page", filter(None, None, None), None),
        ("files, page at row 500,000", filter(None, None, None), deep),
        (
            "remitter=remitter7",
            filter(Some("remitter7"), None, None),
            None,
        ),
        (
            "remitter=remitter7, deep",
            filter(Some("remitter7"), None, None),
            deep,
        ),
        (
            "status=failed",
            filter(None, Some(StatusFilter::Failed), None),
            None,
        ),
        (
            "status=failed, deep",
            filter(None, Some(StatusFilter::Failed), None),
            deep,
        ),
        (
            "status=ops_done",
            filter(None, Some(StatusFilter::Is("ops_done".parse()?)), None),
            None,
        ),
        (
            "remitter=remitter7&status=failed",
            filter(Some("remitter7"), Some(StatusFilter::Failed), None),
            None,
        ),
        (
            "remitter=remitter8&status=itm_failed",
            filter(
                Some("remitter8"),
                Some(StatusFilter::Is("itm_failed".parse()?)),
                None,
            ),
            None,
        ),
        (
            "q=remit_99 (common)",
            filter(None, None, Some("remit_99")),
            None,
        ),
        (
            "q=_123456. (one row)",
            filter(None, None, Some("_123456.")),
            None,
        ),
        (
            "remitter=remitter7&q=_123407. (one row)",
            filter(Some("remitter7"), None, Some("_123407.")),
            None,
        ),
    ];
    for (name, f, before) in cases {
        let mut times = Vec::with_capacity(ROUNDS);
        let mut found = 0;
        for _ in 0..ROUNDS {
            let t = Instant::now();
            found = store.files(&f, before, 50).await?.items.len();
            times.push(t.elapsed());
        }
        report(name, &mut times, found);
    }
    let mut times = Vec::new();
    let mut before = None;
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let page = store.runs(before, 50).await?;
        times.push(t.elapsed());
        before = page.next.and_then(|n| n.parse().ok());
    }
    report("runs, successive pages", &mut times, 50);
    Ok(())
}

fn report(name: &str, times: &mut [Duration], found: usize) {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "  {name:<42} {:>8.2} ms / {:>8.2} ms  ({found} rows)",
        ms(times[times.len() / 2]),
        ms(times[times.len() - 1])
    );
}
