//! The smb2-probe probes, run against pavao 0.3.1 (libsmbclient; blocking, one
//! process-wide lock). Same environment variables and data layout as smb2-probe.
//!
//!   pavao-probe list|read|rename|denywrite|kill|encrypt|misc

use std::io::{BufRead, BufReader, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use md5::{Digest, Md5};
use pavao::{SmbClient, SmbCredentials, SmbEncryptionLevel, SmbError, SmbMode, SmbOpenOptions, SmbOptions, SmbShareMode};

const MIB: usize = 1 << 20;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set (source the test-env file)"))
}

fn client_with(password: &str, port: &str, options: SmbOptions) -> Result<SmbClient, SmbError> {
    let c = SmbClient::new(
        SmbCredentials::default()
            .server(format!("smb://{}:{}", env("IT_SMB_HOST"), port))
            .share(format!("/{}", env("IT_SMB_SHARE")))
            .username(env("IT_SMB_USERNAME"))
            .password(password)
            .workgroup("WORKGROUP"),
        options.no_auto_anonymous_login(true),
    )?;
    c.set_timeout(Duration::from_secs(10))?; // libsmbclient's per-call timeout
    Ok(c)
}

fn client() -> SmbClient {
    client_with(&env("IT_SMB_PASSWORD"), &env("IT_SMB_PORT"), SmbOptions::default()).expect("client")
}

fn verdict(ok: bool, what: &str) {
    println!("{} {what}", if ok { "PASS" } else { "FAIL" });
}
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}
fn errno(e: &SmbError) -> String {
    match e {
        SmbError::Io(io) => format!("{io} (errno {:?}, kind {:?})", io.raw_os_error(), io.kind()),
        e => e.to_string(),
    }
}
fn local_md5(path: &str) -> Option<String> {
    let data = std::fs::read(std::path::Path::new(&std::env::var("IT_SMB_SHARE_PATH").ok()?).join(path)).ok()?;
    Some(hex(&Md5::digest(&data)))
}

/// Read a whole file in 1 MiB reads, hashing; `after` runs once 64 MiB are in.
fn stream(c: &SmbClient, path: &str, mut after: impl FnMut()) -> Result<(u64, String), String> {
    let mut f = c.open_with(path, SmbOpenOptions::default().read(true)).map_err(|e| errno(&e))?;
    let (mut h, mut buf, mut n) = (Md5::new(), vec![0u8; MIB], 0u64);
    let mut fired = false;
    loop {
        let k = f.read(&mut buf).map_err(|e| format!("{e} (errno {:?}) after {n} bytes", e.raw_os_error()))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
        if n >= 64 * MIB as u64 && !fired {
            fired = true;
            after();
        }
    }
    Ok((n, hex(&h.finalize())))
}

fn probe_list() {
    let c = Arc::new(client());
    let check = |v: &[pavao::SmbDirentInfo]| {
        let f: Vec<_> = v.iter().filter(|e| e.name().starts_with('f')).collect();
        f.len() == 2000 && f.iter().all(|e| e.size == 10 && e.mtime > std::time::UNIX_EPOCH && e.ctime > std::time::UNIX_EPOCH)
    };
    let mut times = vec![];
    let mut bad = 0;
    for _ in 0..25 {
        let t = Instant::now();
        match c.list_dirplus("/list2000") {
            Ok(v) => {
                times.push(ms(t.elapsed()));
                bad += !check(&v) as u32;
            }
            Err(e) => {
                println!("  error {}", errno(&e));
                bad += 1
            }
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let s = c.list_dirplus("/list2000").unwrap();
    let e = s.iter().find(|e| e.name() == "f0001.txt").unwrap();
    println!("  sample entry: size {} mtime {:?} ctime {:?}", e.size, e.mtime, e.ctime);
    verdict(bad == 0, &format!("a1 25 sequential listings of 2,000 files (list_dirplus): wrong={bad} ms min/median/max={:.1}/{:.1}/{:.1}",
        times[0], times[times.len() / 2], times[times.len() - 1]));
    let t = Instant::now();
    let hs: Vec<_> = (0..25).map(|_| { let c = c.clone(); std::thread::spawn(move || c.list_dirplus("/list2000").map(|v| check(&v))) }).collect();
    let ok = hs.into_iter().map(|h| h.join().unwrap()).filter(|r| matches!(r, Ok(true))).count();
    verdict(ok == 25, &format!("a2 25 listings from 25 threads (serialised by pavao's lock): {ok}/25 right, total {:.0} ms", ms(t.elapsed())));
}

fn probe_read() {
    let c = Arc::new(client());
    let t = Instant::now();
    let r = stream(&c, "/big/big512.bin", || {});
    let secs = t.elapsed().as_secs_f64();
    let want = local_md5("big/big512.bin");
    verdict(matches!(&r, Ok((n, m)) if *n == 512 * MIB as u64 && Some(m) == want.as_ref()), &format!(
        "b1 stream 512 MiB in 1 MiB reads with MD5: {:.0} MB/s ({secs:.2} s) {r:?}", 512.0 * MIB as f64 / 1e6 / secs));
    let t = Instant::now();
    let hs: Vec<_> = (1..=4).map(|i| {
        let c = c.clone();
        std::thread::spawn(move || { let t = Instant::now(); let p = format!("/big/m64_{i}.bin"); (stream(&c, &p, || {}), p, t.elapsed()) })
    }).collect();
    let mut ok = true;
    for h in hs {
        let (r, p, d) = h.join().unwrap();
        println!("  {p}: {r:?} in {:.0} ms", ms(d));
        ok &= matches!(&r, Ok((n, m)) if *n == 64 * MIB as u64 && Some(m) == local_md5(&p[1..]).as_ref());
    }
    let secs = t.elapsed().as_secs_f64();
    verdict(ok, &format!("b2 4 x 64 MiB from 4 threads, one client: {:.0} MB/s total ({secs:.2} s)", 256.0 * MIB as f64 / 1e6 / secs));
}

fn put(c: &SmbClient, path: &str, data: &[u8]) -> Result<(), String> {
    let mut f = c.open_with(path, SmbOpenOptions::default().create(true).write(true).truncate(true)).map_err(|e| errno(&e))?;
    f.write_all(data).map_err(|e| e.to_string())
}
fn get(c: &SmbClient, path: &str) -> Result<Vec<u8>, String> {
    let mut f = c.open_with(path, SmbOpenOptions::default().read(true)).map_err(|e| errno(&e))?;
    let mut v = vec![];
    f.read_to_end(&mut v).map_err(|e| e.to_string())?;
    Ok(v)
}

fn probe_rename() {
    let c = Arc::new(client());
    let run = format!("/pren{}", std::process::id());
    for d in [run.clone(), format!("{run}/src"), format!("{run}/dst")] {
        c.mkdir(&d, SmbMode::from(0o755)).unwrap();
    }
    put(&c, &format!("{run}/src/a.txt"), b"source").unwrap();
    put(&c, &format!("{run}/dst/a.txt"), b"target").unwrap();
    let r = c.rename(format!("{run}/src/a.txt"), format!("{run}/dst/a.txt")).map_err(|e| errno(&e));
    let src = get(&c, &format!("{run}/src/a.txt"));
    let dst = get(&c, &format!("{run}/dst/a.txt")).map(|v| String::from_utf8_lossy(&v).into_owned());
    verdict(r.is_err() && src.is_ok(), &format!("c1 rename onto existing target: {r:?}; src afterwards {:?}; dst now {dst:?}", src.map(|_| "present")));

    put(&c, &format!("{run}/src/b.txt"), b"bee").unwrap();
    let r = c.rename(format!("{run}/src/b.txt"), format!("{run}/dst/b.txt")).map_err(|e| errno(&e));
    verdict(r.is_ok() && get(&c, &format!("{run}/dst/b.txt")).ok().as_deref() == Some(b"bee"), &format!("c2 rename into another folder, target missing: {r:?}"));

    for i in 0..20 {
        put(&c, &format!("{run}/src/p{i:02}"), format!("payload {i}").as_bytes()).unwrap();
    }
    let t = Instant::now();
    let hs: Vec<_> = (0..20).map(|i| {
        let (c, run) = (c.clone(), run.clone());
        std::thread::spawn(move || c.rename(format!("{run}/src/p{i:02}"), format!("{run}/dst/t{}", i % 4)).map_err(|e| errno(&e)))
    }).collect();
    let results: Vec<_> = hs.into_iter().map(|h| h.join().unwrap()).collect();
    let elapsed = t.elapsed();
    let won = results.iter().filter(|r| r.is_ok()).count();
    let mut payloads = vec![];
    for d in ["src", "dst"] {
        for e in c.list_dir(format!("{run}/{d}")).unwrap() {
            if e.name().starts_with('p') || e.name().starts_with('t') {
                payloads.push(String::from_utf8_lossy(&get(&c, &format!("{run}/{d}/{}", e.name())).unwrap()).into_owned());
            }
        }
    }
    payloads.sort();
    payloads.dedup();
    verdict(payloads.len() == 20, &format!(
        "c3 20 parallel renames onto 4 names: {won} returned Ok, errors {:?}; distinct payloads left {} of 20, {:.1} ms",
        results.iter().filter_map(|r| r.as_ref().err()).collect::<Vec<_>>(), payloads.len(), ms(elapsed)));
}

fn probe_denywrite() {
    let c = client();
    let dw = client_with(&env("IT_SMB_PASSWORD"), &env("IT_SMB_PORT"), SmbOptions::default().open_share_mode(SmbShareMode::DenyWrite)).unwrap();
    let path = format!("pdw{}.bin", std::process::id());
    put(&c, &format!("/{path}"), &vec![7u8; 3 * MIB]).unwrap();
    let holder = concat!(env!("CARGO_MANIFEST_DIR"), "/../smb2-probe/holder.py");
    let mut child = std::process::Command::new("python3").arg(holder).arg(&path)
        .stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "READY");
    let t = Instant::now();
    let held = dw.open_with(format!("/{path}"), SmbOpenOptions::default().read(true)).map(|_| ()).map_err(|e| errno(&e));
    let held_ms = ms(t.elapsed());
    let plain = c.open_with(format!("/{path}"), SmbOpenOptions::default().read(true)).map(|_| ()).map_err(|e| errno(&e));
    verdict(held.as_ref().is_err_and(|e| e.contains("errno Some(16)")), &format!(
        "d1 DenyWrite open while a writer holds the file: {held:?} in {held_ms:.2} ms (default-mode open meanwhile: {plain:?})"));
    writeln!(child.stdin.as_mut().unwrap()).unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    let _ = child.wait();
    let after = dw.open_with(format!("/{path}"), SmbOpenOptions::default().read(true)).map_err(|e| errno(&e)).and_then(|mut f| {
        let mut v = vec![];
        f.read_to_end(&mut v).map_err(|e| e.to_string()).map(|_| v.len())
    });
    verdict(after == Ok(3 * MIB), &format!("d2 after the writer closed: DenyWrite open + read on the same handle: {after:?}"));
}

fn sh(var: &str) {
    let cmd = env(var);
    assert!(std::process::Command::new("sh").arg("-c").arg(&cmd).status().unwrap().success(), "{cmd}");
}

fn probe_kill() {
    let c = client();
    for (name, kill) in [("e1 per-connection smbd killed", "PROBE_KILL_CHILD_CMD"), ("e2 whole smbd killed", "PROBE_KILL_ALL_CMD")] {
        let mut killed = None;
        let r = stream(&c, "/big/big256.bin", || {
            sh(kill);
            killed = Some(Instant::now());
        });
        let after_kill = killed.map(|t| ms(t.elapsed())).unwrap_or(f64::NAN);
        let mut extra = String::new();
        if kill == "PROBE_KILL_ALL_CMD" {
            let t = Instant::now();
            let down = c.stat("/list2000/f0001.txt").map(|s| s.size).map_err(|e| errno(&e));
            extra = format!("; a call while smbd was down: {down:?} after {:.0} ms", ms(t.elapsed()));
            sh("PROBE_RESTART_CMD");
        }
        let t = Instant::now();
        let (mut tries, mut ok) = (0, false);
        while t.elapsed() < Duration::from_secs(60) {
            tries += 1;
            if c.stat("/list2000/f0001.txt").is_ok() {
                ok = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        verdict(r.is_err() && ok, &format!("{name} mid-read: read ended {after_kill:.1} ms after the kill with {r:?}{extra}; next successful call {:.0} ms later, try {tries}", ms(t.elapsed())));
    }
}

fn probe_encrypt() {
    for level in [SmbEncryptionLevel::Require, SmbEncryptionLevel::None] {
        let c = match client_with(&env("IT_SMB_PASSWORD"), &env("IT_SMB_PORT"), SmbOptions::default().encryption_level(level)) {
            Ok(c) => c,
            Err(e) => { verdict(false, &format!("f client {level:?}: {}", errno(&e))); continue; }
        };
        let listed = c.list_dir("/").map(|v| v.len()).map_err(|e| errno(&e));
        // What the server says about this session's encryption (smbstatus -b), when asked to.
        if let Ok(conf) = std::env::var("PROBE_SMBSTATUS_CONF") {
            let out = std::process::Command::new("smbstatus").args(["-s", &conf, "-b"]).output().unwrap();
            for l in String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains(&env("IT_SMB_USERNAME"))) {
                println!("  smbstatus: {}", l.split_whitespace().collect::<Vec<_>>().join(" "));
            }
        }
        let data: Vec<u8> = (0..8 * MIB).map(|i| (i * 7 % 251) as u8).collect();
        let path = format!("/penc{}.bin", std::process::id());
        let t = Instant::now();
        let w = put(&c, &path, &data);
        let wms = ms(t.elapsed());
        let back = get(&c, &path);
        let same = back.as_ref().is_ok_and(|b| *b == data);
        let ok = listed.is_ok() && w.is_ok() && same;
        let label = if level == SmbEncryptionLevel::Require { if ok { "PASS" } else { "FAIL" } } else { "INFO" };
        println!("{label} {}", format!("f encryption_level {level:?}: list {listed:?}; write 8 MiB {w:?} in {wms:.0} ms; read back identical={same}"));
    }
}

fn probe_misc() {
    let c = client();
    let base = format!("/pmisc{}", std::process::id());
    let r1 = c.mkdir(&base, SmbMode::from(0o755)).map_err(|e| errno(&e));
    let r2 = c.mkdir(&base, SmbMode::from(0o755)).map_err(|e| errno(&e));
    verdict(r1.is_ok() && r2.is_err(), &format!("g1 mkdir: {r1:?}; again: {r2:?}"));
    let data: Vec<u8> = (0..32 * MIB).map(|i| (i % 253) as u8).collect();
    let t = Instant::now();
    let w = put(&c, &format!("{base}/whole.bin"), &data);
    let secs = t.elapsed().as_secs_f64();
    let st = c.stat(format!("{base}/whole.bin")).unwrap();
    verdict(w.is_ok() && get(&c, &format!("{base}/whole.bin")).ok() == Some(data.clone()), &format!(
        "g2 whole-file write 32 MiB: {:.0} MB/s; stat size={} modified={:?}", data.len() as f64 / 1e6 / secs, st.size, st.modified));
    let t = Instant::now();
    let m = c.stat(format!("{base}/nope.txt")).map(|_| ()).map_err(|e| errno(&e));
    verdict(m.as_ref().is_err_and(|e| e.contains("errno Some(2)")), &format!("g3 stat of a missing file: {m:?} in {:.2} ms", ms(t.elapsed())));
    for (what, pw, port) in [("g4 wrong password", "wrong-password", env("IT_SMB_PORT")), ("g5 closed port 127.0.0.1:1", "x", "1".into())] {
        let t = Instant::now();
        let r = client_with(pw, &port, SmbOptions::default()).and_then(|c| c.list_dir("/")).map(|v| v.len()).map_err(|e| errno(&e));
        verdict(r.is_err() && t.elapsed() < Duration::from_secs(15), &format!("{what}: {r:?} in {:.0} ms", ms(t.elapsed())));
    }
    // A port that accepts TCP but never speaks SMB (PROBE_SILENT_PORT).
    if let Ok(port) = std::env::var("PROBE_SILENT_PORT") {
        let t = Instant::now();
        let r = client_with("x", &port, SmbOptions::default()).and_then(|c| c.list_dir("/")).map(|v| v.len()).map_err(|e| errno(&e));
        verdict(r.is_err() && t.elapsed() < Duration::from_secs(60), &format!("g6 port that accepts TCP and never answers: {r:?} in {:.0} ms", ms(t.elapsed())));
    }
}

fn main() {
    match std::env::args().nth(1).unwrap_or_default().as_str() {
        "list" => probe_list(),
        "read" => probe_read(),
        "rename" => probe_rename(),
        "denywrite" => probe_denywrite(),
        "kill" => probe_kill(),
        "encrypt" => probe_encrypt(),
        "misc" => probe_misc(),
        _ => eprintln!("usage: pavao-probe list|read|rename|denywrite|kill|encrypt|misc"),
    }
}
