//! The bytes sent are the bytes that passed Policy A (CONTRACT §1.4), also
//! against a writer on the file server itself, which the deny-write open does
//! not stop; and a dry run writes nothing on the share (§9).

use crate::helpers::{Opts, TestApp, decision_of, md5_hex, spawn_app};
use crate::outages::PrivateServers;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

/// Pids of every smbd running with the private config `conf` (the parent
/// and the children serving connections).
fn smbd_pids(conf: &str) -> Vec<String> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_smbd = args
            .first()
            .is_some_and(|a| a.ends_with("smbd") || a.starts_with("smbd"));
        if is_smbd && args.iter().any(|a| a == conf) {
            pids.push(name);
        }
    }
    pids
}

/// Sends `signal` (`STOP`, `CONT`) to these processes, by pid.
fn signal(pids: &[String], signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .args(pids)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pids:?}");
}

/// These processes stopped (SIGSTOP) until dropped, also when the test fails.
struct Stopped<'a>(&'a [String]);

impl<'a> Stopped<'a> {
    fn new(pids: &'a [String]) -> Self {
        signal(pids, "STOP");
        Stopped(pids)
    }
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-CONT").args(self.0).status();
    }
}

/// Bytes in the spool folder's files.
fn spooled(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// The same size, other bytes in the last MiB, and a new last-write time:
/// written on the server's disk, as a local process or NFS would.
fn rewrite_tail(path: &Path, bytes: &mut [u8]) {
    let at = bytes.len() - (1 << 20);
    for b in &mut bytes[at..] {
        *b = b.wrapping_add(0x55);
    }
    let mut f = std::fs::File::options().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(at as u64)).unwrap();
    f.write_all(&bytes[at..]).unwrap();
    f.sync_all().unwrap();
}

fn foi_md5s(app: &TestApp, name: &str) -> Vec<String> {
    app.fakes
        .foi_calls()
        .into_iter()
        .filter(|c| c.file_name == name)
        .map(|c| c.md5)
        .collect()
}

/// A file rewritten on the server's own disk (not over SMB, so the
/// deny-write open does not stop it) while the coordinator streams it: the
/// entry is `unstable`, nothing is claimed or sent; the next run sends the
/// new bytes. Deterministic: every smbd of a private instance is stopped
/// while the spool is still short of the file, so the check after the last
/// byte can only be answered after the rewrite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_rewritten_on_the_server_while_it_is_streamed_is_unstable() {
    const SIZE: usize = 96 << 20;
    let servers = PrivateServers::start(false);
    let mut app = servers.app(Opts::default()).await;
    let conf = servers.vars["IT_SMB_CONF"].clone();
    let spool = app.args.spool_dir.clone();
    let url = format!("{}/api/v1/coordinator/runs", app.base_url);

    let mut caught = None;
    for attempt in 0..5u8 {
        let name = format!("big-{attempt}.bin");
        let mut bytes: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8 ^ attempt).collect();
        app.put("acme", &name, &bytes).await;
        let run = tokio::spawn(
            app.http
                .post(url.clone())
                .bearer_auth(app.token.clone().unwrap())
                .send(),
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while spooled(&spool) == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the read never started"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let pids = smbd_pids(&conf);
        assert!(!pids.is_empty(), "no smbd runs with {conf}");
        let stopped = Stopped::new(&pids);
        // The coordinator asks for the file's metadata only after the last
        // byte is in the spool: short of it now, that question is answered
        // after the rewrite below.
        let short = spooled(&spool) < SIZE as u64;
        if short {
            rewrite_tail(
                &app.local(&format!("{}/acme/{name}", app.source_dir)),
                &mut bytes,
            );
        }
        drop(stopped);
        let resp = run.await.unwrap().unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let body: serde_json::Value = resp.json().await.unwrap();
        if short {
            caught = Some((name, bytes, body));
            break;
        }
        // The read had finished before smbd stopped: try again with a new file.
        eprintln!("attempt {attempt}: the whole file was read before smbd stopped");
    }
    let (name, bytes, body) = caught.expect("smbd was never stopped mid-read in 5 attempts");

    unstable_then_sent(&mut app, &body, &name, &bytes).await;
    app.finish().await;
}

/// The run that read `name` while it changed (`body`) left it `unstable`
/// (changed during the read), claimed and sent nothing; the next run sends
/// its new bytes.
async fn unstable_then_sent(app: &mut TestApp, body: &serde_json::Value, name: &str, new: &[u8]) {
    let entry = decision_of(body, "acme", name);
    assert_eq!(entry["decision"], "unstable", "{body}");
    assert_eq!(
        entry["reason"],
        coordinator::plan::Unstable::ChangedDuringRead.to_string(),
        "{body}"
    );
    let claimed: i64 = sqlx::query_scalar("SELECT count(*) FROM files WHERE file_name = $1")
        .bind(name)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(claimed, 0, "nothing claimed");
    assert!(foi_md5s(app, name).is_empty(), "nothing sent");

    let body = app.run_ok().await;
    assert_eq!(
        decision_of(&body, "acme", name)["decision"],
        "processed",
        "{body}"
    );
    assert_eq!(foi_md5s(app, name), [md5_hex(new)], "the new bytes sent");
}

/// Every file under `dir` (relative path → size), recursively.
fn tree(dir: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                out.push((format!("{rel}/"), 0));
                stack.push(p);
            } else {
                out.push((rel, e.metadata().unwrap().len()));
            }
        }
    }
    out.sort();
    out
}

/// A dry run on a fresh test folder creates no archive folder and no clock
/// file, writes nothing else on the share, and still ages files by the
/// server's clock: an hour-old file would be processed, a fresh one is
/// unstable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_writes_nothing_on_the_share() {
    let app = spawn_app(Opts {
        min_age_secs: 600.0,
        ..Default::default()
    })
    .await;
    app.put("acme", "old.csv", b"old enough").await;
    std::fs::File::options()
        .write(true)
        .open(app.local(&format!("{}/acme/old.csv", app.source_dir)))
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    app.put("acme", "fresh.csv", b"just uploaded").await;
    let before = tree(&app.local(&app.root));

    let resp = app
        .http
        .post(format!("{}/api/v1/coordinator/runs", app.base_url))
        .bearer_auth(app.token.as_deref().unwrap())
        .header("content-type", "application/json")
        .body(r#"{"dry_run": true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["dry_run"], true, "{body}");
    assert_eq!(
        decision_of(&body, "acme", "old.csv")["decision"],
        "would_process",
        "{body}"
    );
    assert_eq!(
        decision_of(&body, "acme", "fresh.csv")["decision"],
        "unstable",
        "{body}"
    );

    assert!(
        !app.local(&app.archive_dir).exists(),
        "a dry run created the archive folder"
    );
    assert_eq!(tree(&app.local(&app.root)), before, "the share changed");
    assert!(
        !tree(&app.local(&app.root))
            .iter()
            .any(|(p, _)| p.contains(".coordinator-clock")),
        "a clock file was written"
    );
    app.finish().await;
}

/// True while an smbd of `conf` holds `name` open (`smbstatus -L`). The
/// share-mode entry it lists goes only as the CLOSE closes the file, before
/// the CLOSE looks at the file's size and times.
fn held_open(conf: &str, name: &str) -> bool {
    let out = Command::new("smbstatus")
        .args(["-L", "-s", conf])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains(name)
}

/// Holds every `pread64` of `path` by these processes (and their threads
/// and children) for two seconds on entry, until dropped.
struct SlowReads(std::process::Child);

impl SlowReads {
    async fn start(pids: &[String], path: &Path) -> Self {
        let mut cmd = Command::new("strace");
        cmd.args(["-f", "-qq", "-o", "/dev/null", "-e", "trace=pread64"])
            .args(["-e", "inject=pread64:delay_enter=2s", "-P"])
            .arg(path);
        for p in pids {
            cmd.args(["-p", p]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("strace");
        let traced = |pid: &String| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .map(|s| {
                    s.lines()
                        .any(|l| l.starts_with("TracerPid:") && l.trim_end() != "TracerPid:\t0")
                })
                .unwrap_or(false)
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !pids.iter().all(traced) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "strace did not attach"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        SlowReads(child)
    }
}

impl Drop for SlowReads {
    fn drop(&mut self) {
        // SIGINT: strace detaches from its tracees and exits.
        let _ = Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// The same for a small file, read in one compound (CREATE, READ, CLOSE):
/// the server's reads of it are slowed (strace), the file is rewritten on
/// the server's disk while smbd holds it open for the coordinator, and it
/// still holds it after the rewrite, so the CLOSE's look at the file comes
/// after it. The entry is `unstable`; the next run sends the new bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_file_rewritten_on_the_server_while_it_is_read_is_unstable() {
    let servers = PrivateServers::start(false);
    let mut app = servers.app(Opts::default()).await;
    let conf = servers.vars["IT_SMB_CONF"].clone();
    let url = format!("{}/api/v1/coordinator/runs", app.base_url);

    let mut caught = None;
    for attempt in 0..5u8 {
        let name = format!("small-{attempt}.csv");
        let old: Vec<u8> = (0..64 << 10).map(|i| (i % 241) as u8 ^ attempt).collect();
        app.put("acme", &name, &old).await;
        let path =
            std::fs::canonicalize(app.local(&format!("{}/acme/{name}", app.source_dir))).unwrap();
        let slow = SlowReads::start(&smbd_pids(&conf), &path).await;
        let run = tokio::spawn(
            app.http
                .post(url.clone())
                .bearer_auth(app.token.clone().unwrap())
                .send(),
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !held_open(&conf, &name) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the file was never opened"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let new: Vec<u8> = old.iter().map(|b| b.wrapping_add(0x55)).collect();
        std::fs::write(&path, &new).unwrap();
        let still = held_open(&conf, &name);
        let resp = run.await.unwrap().unwrap();
        drop(slow);
        assert_eq!(resp.status().as_u16(), 200);
        let body: serde_json::Value = resp.json().await.unwrap();
        if still {
            caught = Some((name, new, body));
            break;
        }
        eprintln!("attempt {attempt}: smbd had closed the file before the rewrite ended");
    }
    let (name, new, body) = caught.expect("the rewrite never fell inside the read in 5 attempts");
    unstable_then_sent(&mut app, &body, &name, &new).await;
    app.finish().await;
}
