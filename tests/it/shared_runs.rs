//! Runs shared by several instances (CONTRACT §10), on real Postgres and
//! Samba: the order candidates are taken in, proved on the store itself
//! (no timing involved), and the background part run by two instances'
//! passes at once.

use crate::fakes::FoiBehavior;
use crate::helpers::{Opts, StoreDb, join_instance, running_run, spawn_app};
use chrono::{Duration as Age, Utc};
use coordinator::plan::{self, Group};
use coordinator::scan::Candidate;
use coordinator::source::Entry;
use coordinator::store::WorkStore;
use std::collections::BTreeMap;

fn group(remitter: &str, name: &str, age_secs: i64) -> Group {
    let t = Utc::now() - Age::seconds(age_secs);
    Group {
        base_name: name.into(),
        newest: Candidate {
            remitter: remitter.into(),
            entry: Entry {
                name: name.into(),
                is_dir: false,
                size: 1,
                mtime: t,
                ctime: t,
            },
        },
        superseded: Vec::new(),
        copies: None,
    }
}

/// Issue 13 item 5, deterministically: remitter A has 500 files, B one
/// (its newest of all). Two instances taking 4 + 1 candidates each (their
/// capacity) take B's file within the first `instances × MAX_CONCURRENT_FILES
/// + 1`: in the very first take. Within A, oldest first; nobody takes a
/// candidate another holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candidates_are_taken_round_robin_across_remitters_oldest_first() {
    // The store alone: no coordinator's own taker takes candidates meanwhile.
    let t = StoreDb::new().await;
    let store = &t.store;
    let (one, two) = (
        join_instance(&t.db, "one").await,
        join_instance(&t.db, "two").await,
    );
    let run_id = running_run(&t.db, one, "one").await;
    let mut work: Vec<Group> = (0..500)
        .map(|i| group("A", &format!("a{i:03}.csv"), 10_000 - i))
        .collect();
    work.push(group("B", "b.csv", 1));
    store
        .add_work(run_id, &serde_json::json!({}), &plan::fair_share(work))
        .await
        .unwrap();

    let first = store.take_work(run_id, one, 5).await.unwrap();
    let names = |t: &[coordinator::store::TakenWork]| -> Vec<String> {
        t.iter()
            .map(|w| w.group.newest.entry.name.clone())
            .collect()
    };
    let first_names = names(&first);
    assert!(
        first_names.contains(&"b.csv".to_string()),
        "{first_names:?}"
    );
    assert!(
        first_names.contains(&"a000.csv".to_string()),
        "A's oldest first: {first_names:?}"
    );
    let second = store.take_work(run_id, two, 5).await.unwrap();
    let second_names = names(&second);
    assert_eq!(
        second_names,
        ["a004.csv", "a005.csv", "a006.csv", "a007.csv", "a008.csv"]
    );
    assert!(first.iter().all(|t| !t.taken_over) && second.iter().all(|t| !t.taken_over));
    t.finish().await;
}

/// Issue 13 item 7: two instances' background passes at once over 200
/// processed files (20 of them failures for IQube), all moves and
/// notifications pending when both start: every file is moved once (one
/// `archive_succeeded` each, nothing suffixed in the archive) and every
/// notification is delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_background_passes_at_once_move_and_notify_once() {
    use crate::fakes::IqubeBehavior;
    use std::os::unix::fs::PermissionsExt;
    let mut app = spawn_app(Opts::default()).await;
    let other = app.start_another().await;
    // While the runs go, the archive folder refuses writes and IQube is down.
    let archive = app.local(&app.archive_dir);
    std::fs::create_dir_all(&archive).unwrap();
    std::fs::set_permissions(&archive, std::fs::Permissions::from_mode(0o555)).unwrap();
    app.fakes.set_iqube(IqubeBehavior::Down);
    app.fakes
        .set_foi(FoiBehavior::Raw(422, "no template matched".into()));
    for i in 0..20 {
        app.put(
            &format!("r{}", i % 10),
            &format!("bad{i:03}.csv"),
            format!("bad {i}").as_bytes(),
        )
        .await;
    }
    let body = app.run_ok().await;
    assert_eq!(body["summary"]["failed"], 20, "{body}");
    app.fakes.set_foi(FoiBehavior::success());
    for i in 0..180 {
        app.put(
            &format!("r{}", i % 10),
            &format!("ok{i:03}.csv"),
            format!("ok {i}").as_bytes(),
        )
        .await;
    }
    let body = app.run_ok().await;
    assert_eq!(body["summary"]["succeeded"], 180, "{body}");
    let moved: i64 = sqlx::query_scalar("SELECT count(*) FROM files WHERE archived_at IS NOT NULL")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(moved, 0, "nothing could be moved yet");

    std::fs::set_permissions(&archive, std::fs::Permissions::from_mode(0o777)).unwrap();
    app.fakes.set_iqube(IqubeBehavior::Ok);
    sqlx::query("UPDATE notifications SET next_attempt_at = now()")
        .execute(&app.db)
        .await
        .unwrap();
    let (a, b) = tokio::join!(
        app.server.engine.background_pass(),
        other.engine.background_pass()
    );
    // One pass at a time across instances: a pass that found the other
    // running left everything to it; whatever is left, the next one does.
    let (a2, b2) = tokio::join!(
        app.server.engine.background_pass(),
        other.engine.background_pass()
    );
    eprintln!("passes: {a:?} {b:?} then {a2:?} {b2:?}");
    let per_file: BTreeMap<i64, i64> = sqlx::query_as(
        "SELECT file_id, count(*) FROM file_events WHERE status = 'archive_succeeded' GROUP BY 1",
    )
    .fetch_all(&app.db)
    .await
    .unwrap()
    .into_iter()
    .collect();
    assert_eq!(per_file.len(), 180, "every success file moved");
    assert!(
        per_file.values().all(|n| *n == 1),
        "each once: {per_file:?}"
    );
    let mut in_archive = 0;
    for r in 0..10 {
        for name in app.archive_names(&format!("r{r}")) {
            assert!(
                name.starts_with("ok") && !name.contains('~') && !name.contains('('),
                "{name}"
            );
            in_archive += 1;
        }
    }
    assert_eq!(in_archive, 180);
    let keys: Vec<String> = app
        .fakes
        .iqube_calls()
        .into_iter()
        .filter_map(|c| c.idempotency_key)
        .collect();
    let mut unique = keys.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        (keys.len(), unique.len()),
        (20, 20),
        "each delivered once: {keys:?}"
    );
    let undelivered: i64 =
        sqlx::query_scalar("SELECT count(*) FROM notifications WHERE delivered_at IS NULL")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(undelivered, 0);
    other.shutdown.cancel();
    let _ = other.done.await;
    app.finish().await;
}
