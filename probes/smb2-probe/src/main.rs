//! Probes for the `smb2` crate (pure Rust SMB2/3 client) against a private smbd.
//!
//! Connection from IT_SMB_HOST, IT_SMB_PORT, IT_SMB_SHARE, IT_SMB_USERNAME,
//! IT_SMB_PASSWORD (as written by scripts/test-env-up.sh). Test data layout and
//! the kill/restart hooks are described in ../RESULTS.md and ../run-all.sh.
//!
//!   smb2-probe list|read|rename|denywrite|kill|encrypt|misc
//!
//! Every probe prints lines starting with PASS or FAIL plus its figures.

use std::future::Future;
use std::time::{Duration, Instant};

use md5::{Digest, Md5};
use smb2::msg::create::{CreateDisposition, CreateRequest, CreateResponse, ImpersonationLevel, ShareAccess};
use smb2::pack::{ReadCursor, Unpack};
use smb2::types::flags::FileAccessMask;
use smb2::types::status::NtStatus;
use smb2::types::{Command, OplockLevel};
use smb2::{ClientConfig, ErrorKind, FileDownload, ReconnectPolicy, RenameOptions, SmbClient, Tree};

const MIB: usize = 1 << 20;
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

type Res<T> = Result<T, String>;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set (source the test-env file)"))
}

fn config(password: &str, port: &str) -> ClientConfig {
    ClientConfig {
        addr: format!("{}:{}", env("IT_SMB_HOST"), port),
        username: env("IT_SMB_USERNAME"),
        password: password.to_string(),
        timeout: Duration::from_secs(5),            // TCP connect
        response_timeout: Some(CALL_TIMEOUT),       // every request
        auto_reconnect: true,
        dfs_enabled: false,
        ..Default::default()
    }
}

/// Any future with a deadline; a timeout is reported as "HANG".
async fn timed<T, E: std::fmt::Display>(limit: Duration, f: impl Future<Output = Result<T, E>>) -> Res<T> {
    match tokio::time::timeout(limit, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("HANG (no answer within {limit:?})")),
    }
}

async fn connect() -> Res<(SmbClient, Tree)> {
    let mut client = timed(CALL_TIMEOUT, SmbClient::connect(config(&env("IT_SMB_PASSWORD"), &env("IT_SMB_PORT")))).await?;
    let tree = timed(CALL_TIMEOUT, client.connect_share(&env("IT_SMB_SHARE"))).await?;
    Ok((client, tree))
}

fn verdict(ok: bool, what: &str) {
    println!("{} {what}", if ok { "PASS" } else { "FAIL" });
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// MD5 of the same file on the server's disk, when IT_SMB_SHARE_PATH is readable here.
fn local_md5(path: &str) -> Option<String> {
    let p = std::path::Path::new(&std::env::var("IT_SMB_SHARE_PATH").ok()?).join(path);
    let mut f = std::fs::File::open(p).ok()?;
    let mut h = Md5::new();
    std::io::copy(&mut f, &mut HashWriter(&mut h)).ok()?;
    Some(hex(&h.finalize()))
}
struct HashWriter<'a>(&'a mut Md5);
impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.update(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Drain a download in 1 MiB chunks, hashing; each chunk has its own deadline.
async fn drain(mut dl: FileDownload<'_>) -> Res<(u64, String)> {
    let mut h = Md5::new();
    let mut n = 0u64;
    loop {
        match tokio::time::timeout(CALL_TIMEOUT, dl.next_chunk()).await {
            Err(_) => return Err(format!("HANG after {n} bytes")),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(format!("{e} (kind {:?}) after {n} bytes", e.kind())),
            Ok(Some(Ok(chunk))) => {
                n += chunk.len() as u64;
                h.update(&chunk);
            }
        }
    }
    Ok((n, hex(&h.finalize())))
}

async fn download(client: &mut SmbClient, tree: &Tree, path: &str) -> Res<FileDownload<'static>> {
    let dl = timed(CALL_TIMEOUT, client.open_file_download(tree, path)).await?;
    Ok(dl.with_chunk_size(MIB as u32))
}

// ---------------------------------------------------------------- a. listings
async fn probe_list() -> Res<()> {
    let (mut client, mut tree) = connect().await?;
    let dir = "list2000";
    let check = |entries: &[smb2::DirectoryEntry]| -> bool {
        let files: Vec<_> = entries.iter().filter(|e| e.name.starts_with('f')).collect();
        files.len() == 2000 && files.iter().all(|e| e.size == 10 && e.modified.0 != 0 && e.changed.0 != 0)
    };
    // 25 one after the other through the client.
    let (mut hangs, mut bad, mut times) = (0, 0, vec![]);
    for _ in 0..25 {
        let t = Instant::now();
        match timed(CALL_TIMEOUT, client.list_directory(&mut tree, dir)).await {
            Ok(e) => {
                times.push(ms(t.elapsed()));
                if !check(&e) {
                    bad += 1;
                }
            }
            Err(e) if e.starts_with("HANG") => hangs += 1,
            Err(e) => return Err(e),
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let sample = client.list_directory(&mut tree, dir).await.map_err(|e| e.to_string())?;
    let f = sample.iter().find(|e| e.name == "f0001.txt");
    println!("  sample entry: {f:?}");
    verdict(hangs == 0 && bad == 0, &format!(
        "a1 25 sequential listings of 2,000 files: hangs={hangs} wrong={bad} ms min/median/max={:.1}/{:.1}/{:.1}",
        times[0], times[times.len() / 2], times[times.len() - 1]));

    // 25 at the same time, each task on its own clone of the one connection.
    let t = Instant::now();
    let mut tasks = vec![];
    for _ in 0..25 {
        let mut conn = client.connection_for(&tree).map_err(|e| e.to_string())?;
        let tree = tree.clone();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            timed(CALL_TIMEOUT, tree.list_directory(&mut conn, dir)).await.map(|e| (e, t.elapsed()))
        }));
    }
    let (mut hangs, mut bad, mut worst) = (0, 0, 0.0f64);
    for task in tasks {
        match task.await.unwrap() {
            Ok((e, d)) => {
                worst = worst.max(ms(d));
                if !check(&e) {
                    bad += 1;
                }
            }
            Err(e) if e.starts_with("HANG") => hangs += 1,
            Err(e) => return Err(e),
        }
    }
    verdict(hangs == 0 && bad == 0, &format!(
        "a2 25 concurrent listings (one connection, multi-thread runtime): hangs={hangs} wrong={bad} total {:.0} ms, slowest {worst:.0} ms",
        ms(t.elapsed())));
    Ok(())
}

// ---------------------------------------------------------------- b. reads
async fn probe_read() -> Res<()> {
    let (mut client, tree) = connect().await?;
    let path = "big/big512.bin";
    let t = Instant::now();
    let dl = download(&mut client, &tree, path).await?;
    let (n, md5) = drain(dl).await?;
    let secs = t.elapsed().as_secs_f64();
    let want = local_md5(path);
    verdict(n == 512 * MIB as u64 && want.as_deref().is_none_or(|w| w == md5), &format!(
        "b1 stream 512 MiB in 1 MiB chunks with MD5: {:.0} MB/s ({secs:.2} s), md5 {md5} local {}",
        n as f64 / 1e6 / secs, want.unwrap_or_else(|| "n/a".into())));

    let t = Instant::now();
    let mut tasks = vec![];
    for i in 1..=4 {
        let path = format!("big/m64_{i}.bin");
        let dl = download(&mut client, &tree, &path).await?;
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            drain(dl).await.map(|(n, md5)| (path, n, md5, t.elapsed()))
        }));
    }
    let (mut total, mut ok) = (0u64, true);
    for task in tasks {
        let (path, n, md5, d) = task.await.unwrap()?;
        total += n;
        ok &= n == 64 * MIB as u64 && local_md5(&path).is_none_or(|w| w == md5);
        println!("  {path}: {n} bytes in {:.0} ms, md5 {md5}", ms(d));
    }
    let secs = t.elapsed().as_secs_f64();
    verdict(ok, &format!("b2 4 x 64 MiB concurrently on one connection: {:.0} MB/s total ({secs:.2} s)", total as f64 / 1e6 / secs));
    Ok(())
}

// ---------------------------------------------------------------- c. rename
async fn probe_rename() -> Res<()> {
    let (mut client, mut tree) = connect().await?;
    let run = format!("ren{}", std::process::id());
    for d in [run.clone(), format!("{run}/src"), format!("{run}/dst")] {
        timed(CALL_TIMEOUT, client.create_directory(&tree, &d)).await?;
    }
    let no_replace = RenameOptions::new().replace_if_exists(false);

    // c1: target exists -> must fail, both files intact.
    for (p, d) in [(format!("{run}/src/a.txt"), b"source"), (format!("{run}/dst/a.txt"), b"target")] {
        timed(CALL_TIMEOUT, client.write_file(&tree, &p, d)).await?;
    }
    let r = timed(CALL_TIMEOUT, async {
        client.rename_with(&tree, &format!("{run}/src/a.txt"), &format!("{run}/dst/a.txt"), no_replace).await
            .map_err(|e| format!("{e} | kind {:?} status {:?}", e.kind(), e.status()))
    }).await;
    let src = client.read_file(&mut tree, &format!("{run}/src/a.txt")).await.map_err(|e| e.to_string())?;
    let dst = client.read_file(&mut tree, &format!("{run}/dst/a.txt")).await.map_err(|e| e.to_string())?;
    let refused = matches!(&r, Err(e) if e.contains("OBJECT_NAME_COLLISION") && e.contains("AlreadyExists"));
    verdict(refused && src == b"source" && dst == b"target", &format!(
        "c1 rename onto existing target refused: {:?}; src={:?} dst={:?}", r, String::from_utf8_lossy(&src), String::from_utf8_lossy(&dst)));

    // c2: target missing -> succeeds.
    timed(CALL_TIMEOUT, client.write_file(&tree, &format!("{run}/src/b.txt"), b"bee")).await?;
    let r = timed(CALL_TIMEOUT, client.rename_with(&tree, &format!("{run}/src/b.txt"), &format!("{run}/dst/b.txt"), no_replace)).await;
    let gone = client.stat(&mut tree, &format!("{run}/src/b.txt")).await.map_err(|e| e.kind());
    let moved = client.read_file(&mut tree, &format!("{run}/dst/b.txt")).await.map_err(|e| e.to_string())?;
    verdict(r.is_ok() && gone.as_ref().err() == Some(&ErrorKind::NotFound) && moved == b"bee",
        &format!("c2 rename into another folder, target missing: {r:?}, source now {:?}", gone.map(|_| "present")));

    // c3: 20 renames at once, 4 target names (5 sources race for each).
    let mut tasks = vec![];
    for i in 0..20 {
        timed(CALL_TIMEOUT, client.write_file(&tree, &format!("{run}/src/p{i:02}"), format!("payload {i}").as_bytes())).await?;
    }
    let t = Instant::now();
    for i in 0..20 {
        let mut conn = client.connection_for(&tree).map_err(|e| e.to_string())?;
        let tree = tree.clone();
        let (from, to) = (format!("{run}/src/p{i:02}"), format!("{run}/dst/t{}", i % 4));
        tasks.push(tokio::spawn(async move {
            timed(CALL_TIMEOUT, async { tree.rename_with(&mut conn, &from, &to, no_replace).await.map_err(|e| format!("{:?}", e.kind())) }).await
        }));
    }
    let (mut won, mut collided, mut other) = (0, 0, vec![]);
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) => won += 1,
            Err(e) if e == "AlreadyExists" => collided += 1,
            Err(e) => other.push(e),
        }
    }
    let elapsed = t.elapsed();
    // Every payload must still exist exactly once, in src or dst.
    let mut payloads = vec![];
    for d in ["src", "dst"] {
        for e in client.list_directory(&mut tree, &format!("{run}/{d}")).await.map_err(|e| e.to_string())? {
            if e.name.starts_with('p') || e.name.starts_with('t') {
                let data = client.read_file(&mut tree, &format!("{run}/{d}/{}", e.name)).await.map_err(|e| e.to_string())?;
                payloads.push(String::from_utf8_lossy(&data).into_owned());
            }
        }
    }
    payloads.sort();
    payloads.dedup();
    verdict(won == 4 && collided == 16 && other.is_empty() && payloads.len() == 20, &format!(
        "c3 20 parallel renames onto 4 names: {won} renamed, {collided} refused (collision), other errors {other:?}, distinct payloads left {} of 20, {:.1} ms",
        payloads.len(), ms(elapsed)));
    Ok(())
}

// ---------------------------------------------------------------- d. deny-write open
/// CREATE for reading with ShareAccess = FILE_SHARE_READ only (deny write).
async fn open_deny_write(client: &SmbClient, tree: &Tree, path: &str) -> Result<CreateResponse, NtStatus> {
    let req = CreateRequest {
        requested_oplock_level: OplockLevel::None,
        impersonation_level: ImpersonationLevel::Impersonation,
        desired_access: FileAccessMask::new(
            FileAccessMask::FILE_READ_DATA | FileAccessMask::FILE_READ_ATTRIBUTES | FileAccessMask::SYNCHRONIZE,
        ),
        file_attributes: 0,
        share_access: ShareAccess(ShareAccess::FILE_SHARE_READ),
        create_disposition: CreateDisposition::FileOpen,
        create_options: 0,
        name: path.replace('/', "\\"),
        create_contexts: vec![],
    };
    let conn = client.connection_for(tree).map_err(|_| NtStatus(0xFFFF_FFFF))?;
    let frame = tokio::time::timeout(CALL_TIMEOUT, conn.execute(Command::Create, &req, Some(tree.tree_id)))
        .await
        .map_err(|_| NtStatus(0xFFFF_FFFE))?
        .map_err(|e| e.status().unwrap_or(NtStatus(0xFFFF_FFFD)))?;
    if frame.header.status != NtStatus::SUCCESS {
        return Err(frame.header.status);
    }
    CreateResponse::unpack(&mut ReadCursor::new(&frame.body)).map_err(|_| NtStatus(0xFFFF_FFFC))
}

async fn probe_denywrite() -> Res<()> {
    use std::io::{BufRead, BufReader, Write};
    let (mut client, tree) = connect().await?;
    let path = format!("dw{}.bin", std::process::id());
    timed(CALL_TIMEOUT, client.write_file(&tree, &path, &vec![7u8; 3 * MIB])).await?;

    let holder = concat!(env!("CARGO_MANIFEST_DIR"), "/holder.py");
    let mut child = std::process::Command::new("python3").arg(holder).arg(&path)
        .stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped())
        .spawn().map_err(|e| format!("python3 holder.py: {e}"))?;
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).map_err(|e| e.to_string())?;
    if line.trim() != "READY" {
        let _ = child.kill();
        return Err(format!("holder did not get the file open: {line:?}"));
    }

    let t = Instant::now();
    let held = open_deny_write(&client, &tree, &path).await;
    let held_ms = ms(t.elapsed());
    if let Ok(resp) = &held {
        let mut conn = client.connection_for(&tree).map_err(|e| e.to_string())?;
        let _ = tree.close_handle(&mut conn, resp.file_id).await;
    }
    // Control: an ordinary read open (share read+write+delete) does not notice the writer.
    let plain = timed(CALL_TIMEOUT, client.open_file_download(&tree, &path)).await.map(|d| d.size());
    verdict(matches!(held, Err(s) if s == NtStatus::SHARING_VIOLATION), &format!(
        "d1 deny-write open while a writer holds the file: {:?} in {held_ms:.2} ms (plain read open meanwhile: {:?})",
        held.as_ref().map(|r| r.end_of_file), plain));

    writeln!(child.stdin.as_mut().unwrap()).map_err(|e| e.to_string())?;
    line.clear();
    out.read_line(&mut line).map_err(|e| e.to_string())?;
    let _ = child.wait();

    let after = open_deny_write(&client, &tree, &path).await;
    match after {
        Ok(resp) => {
            let mut conn = client.connection_for(&tree).map_err(|e| e.to_string())?;
            let dl = FileDownload::new(&tree, &mut conn, resp.file_id, resp.end_of_file, MIB as u32);
            let r = drain(dl).await;
            verdict(matches!(&r, Ok((n, _)) if *n == resp.end_of_file && *n == 3 * MIB as u64), &format!(
                "d2 after the writer closed ({}): deny-write open OK, same handle streamed: {r:?}", line.trim()));
        }
        Err(s) => verdict(false, &format!("d2 after the writer closed: deny-write open still fails: {s:?}")),
    }
    Ok(())
}

// ---------------------------------------------------------------- e. smbd killed mid-read
fn sh(var: &str) -> Res<()> {
    let cmd = std::env::var(var).map_err(|_| format!("{var} not set"))?;
    let st = std::process::Command::new("sh").arg("-c").arg(&cmd).status().map_err(|e| e.to_string())?;
    if st.success() { Ok(()) } else { Err(format!("{var} ({cmd}) failed: {st}")) }
}

/// Start a 256 MiB read, run the kill hook after 64 MiB, time until the read fails.
async fn read_and_kill(client: &mut SmbClient, tree: &Tree, kill_var: &str) -> Res<String> {
    let mut dl = download(client, tree, "big/big256.bin").await?;
    let mut n = 0usize;
    let mut killed_at = None;
    loop {
        match tokio::time::timeout(Duration::from_secs(60), dl.next_chunk()).await {
            Err(_) => return Ok(format!("HANG: no answer 60 s after the kill ({n} bytes read)")),
            Ok(None) => return Ok(format!("read completed ({n} bytes) although smbd was killed")),
            Ok(Some(Err(e))) => {
                let d = killed_at.map(|t: Instant| ms(t.elapsed())).unwrap_or(f64::NAN);
                return Ok(format!("read failed {d:.1} ms after the kill, at {} MiB: {e} (kind {:?})", n / MIB, e.kind()));
            }
            Ok(Some(Ok(c))) => {
                n += c.len();
                if n >= 64 * MIB && killed_at.is_none() {
                    sh(kill_var)?;
                    killed_at = Some(Instant::now());
                }
            }
        }
    }
}

async fn probe_kill() -> Res<()> {
    let (mut client, mut tree) = connect().await?;
    // e1: only the per-connection child dies; the listener stays up.
    let r = read_and_kill(&mut client, &tree, "PROBE_KILL_CHILD_CMD").await?;
    let t = Instant::now();
    let next = timed(Duration::from_secs(30), client.list_directory(&mut tree, "list2000")).await.map(|e| e.len());
    verdict(!r.starts_with("HANG") && next.is_ok(), &format!(
        "e1 per-connection smbd killed mid-read: {r}; next listing {:?} in {:.1} ms (auto reconnect)", next, ms(t.elapsed())));

    // e2/e3: the whole smbd instance dies, a call is made while it is down, then it
    // restarts. e2 with the default ReconnectPolicy (10 s failure cooldown), e3 with 1 s.
    for (name, cooldown) in [("e2", None), ("e3", Some(Duration::from_secs(1)))] {
        if let Some(c) = cooldown {
            client.set_reconnect_policy(ReconnectPolicy { failure_cooldown: c, ..Default::default() });
        }
        let r = read_and_kill(&mut client, &tree, "PROBE_KILL_ALL_CMD").await?;
        let t = Instant::now();
        let down = timed(Duration::from_secs(90), client.stat(&mut tree, "list2000/f0001.txt")).await;
        let down_ms = ms(t.elapsed());
        sh("PROBE_RESTART_CMD")?;
        let t = Instant::now();
        let (mut tries, mut last) = (0, String::new());
        let ok = loop {
            tries += 1;
            match timed(Duration::from_secs(30), client.stat(&mut tree, "list2000/f0001.txt")).await {
                Ok(_) => break true,
                Err(e) => last = e,
            }
            if t.elapsed() > Duration::from_secs(60) {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        verdict(!r.starts_with("HANG") && ok && !down.as_ref().is_err_and(|e| e.starts_with("HANG")), &format!(
            "{name} whole smbd killed mid-read (reconnect cooldown {}): {r}; a call while smbd was down: {:?} after {down_ms:.0} ms; \
             after restart the first successful call came {:.0} ms later, on try {tries} (calls 250 ms apart; last error before: {last:?})",
            cooldown.map_or("default 10 s".to_string(), |c| format!("{c:?}")), down.map(|i| i.size), ms(t.elapsed())));
    }
    Ok(())
}

// ---------------------------------------------------------------- f. encryption
async fn probe_encrypt() -> Res<()> {
    let (mut client, mut tree) = connect().await?;
    let enc = client.diagnostics().primary.encryption;
    let dialect = client.params().map(|p| format!("{:?}", p.dialect));
    let listed = timed(CALL_TIMEOUT, client.list_directory(&mut tree, "")).await.map(|e| e.len());
    let data: Vec<u8> = (0..8 * MIB).map(|i| (i * 7 % 251) as u8).collect();
    let path = format!("enc{}.bin", std::process::id());
    let t = Instant::now();
    let wrote = timed(Duration::from_secs(30), client.write_file(&tree, &path, &data)).await;
    let wms = ms(t.elapsed());
    let t = Instant::now();
    let dl = download(&mut client, &tree, &path).await?;
    let read = drain(dl).await;
    let rms = ms(t.elapsed());
    let mut h = Md5::new();
    h.update(&data);
    let same = matches!(&read, Ok((_, m)) if *m == hex(&h.finalize()));
    verdict(enc.active && listed.is_ok() && wrote.is_ok() && same, &format!(
        "f1 share with smb encrypt = required: dialect {dialect:?}, encryption active={} cipher={:?}; list {listed:?}; write 8 MiB {wrote:?} in {wms:.0} ms; read back identical={same} in {rms:.0} ms",
        enc.active, enc.cipher));
    Ok(())
}

// ---------------------------------------------------------------- g. the rest
async fn probe_misc() -> Res<()> {
    let (mut client, mut tree) = connect().await?;
    let base = format!("misc{}", std::process::id());
    let data: Vec<u8> = (0..32 * MIB).map(|i| (i % 253) as u8).collect();

    let r1 = timed(CALL_TIMEOUT, client.create_directory(&tree, &base)).await;
    let again = client.create_directory(&tree, &base).await.err();
    let kind = again.as_ref().map(|e| e.kind());
    verdict(r1.is_ok() && kind == Some(ErrorKind::AlreadyExists), &format!(
        "g1 mkdir: {r1:?}; again: {:?} kind {kind:?}", again.map(|e| e.to_string())));

    let path = format!("{base}/whole.bin");
    let t = Instant::now();
    let w = timed(Duration::from_secs(30), client.write_file(&tree, &path, &data)).await;
    let secs = t.elapsed().as_secs_f64();
    let back = client.read_file_pipelined(&mut tree, &path).await.map_err(|e| e.to_string())?;
    let st = client.stat(&mut tree, &path).await.map_err(|e| e.to_string())?;
    verdict(w.is_ok() && back == data && st.size == data.len() as u64 && st.modified.0 != 0 && st.changed.0 != 0, &format!(
        "g2 whole-file write 32 MiB: {w:?} {:.0} MB/s, read back identical={}, stat size={} modified={} changed={}",
        data.len() as f64 / 1e6 / secs, back == data, st.size, st.modified.0, st.changed.0));

    let t = Instant::now();
    let missing = client.stat(&mut tree, &format!("{base}/nope.txt")).await;
    let e = missing.err();
    verdict(e.as_ref().map(|e| e.kind()) == Some(ErrorKind::NotFound), &format!(
        "g3 stat of a missing file: kind {:?} status {:?} in {:.2} ms", e.as_ref().map(|e| e.kind()), e.as_ref().and_then(|e| e.status()), ms(t.elapsed())));

    // Wrong password, closed port: error kind and how long it took.
    for (what, pw, port) in [("g4 wrong password", "wrong-password", env("IT_SMB_PORT")), ("g5 closed port 127.0.0.1:1", "x", "1".to_string())] {
        let t = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(30), SmbClient::connect(config(pw, &port))).await;
        let d = t.elapsed();
        let desc = match &r {
            Err(_) => "HANG (30 s)".to_string(),
            Ok(Ok(_)) => "connected?!".to_string(),
            Ok(Err(e)) => format!("{e} | kind {:?}", e.kind()),
        };
        verdict(matches!(r, Ok(Err(_))) && d < Duration::from_secs(10), &format!("{what}: {desc} in {:.1} ms", ms(d)));
    }
    // A port that accepts TCP but never speaks SMB (PROBE_SILENT_PORT, e.g. `nc -l`).
    if let Ok(port) = std::env::var("PROBE_SILENT_PORT") {
        let t = Instant::now();
        let r = timed(Duration::from_secs(60), SmbClient::connect(config("x", &port))).await;
        verdict(r.is_err() && !r.as_ref().err().unwrap().starts_with("HANG"), &format!(
            "g6 port that accepts TCP and never answers: {:?} in {:.0} ms", r.err(), ms(t.elapsed())));
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let which = std::env::args().nth(1).unwrap_or_default();
    let r = match which.as_str() {
        "list" => probe_list().await,
        "read" => probe_read().await,
        "rename" => probe_rename().await,
        "denywrite" => probe_denywrite().await,
        "kill" => probe_kill().await,
        "encrypt" => probe_encrypt().await,
        "misc" => probe_misc().await,
        _ => Err("usage: smb2-probe list|read|rename|denywrite|kill|encrypt|misc".into()),
    };
    if let Err(e) = r {
        println!("FAIL {which}: {e}");
        std::process::exit(1);
    }
}
