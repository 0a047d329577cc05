//! The parts of `scripts/bench.sh` that bash does badly (issue 8):
//!
//! - `mkfiles DIR FOLDERS FILES BYTES`: writes FILES files of BYTES bytes,
//!   spread over FOLDERS remitter folders `DIR/r000/f00000.csv`, … (names
//!   that carry no version stamp, so every file is its own logical file);
//! - `post URL DIR`: the HTTP floor, POSTs every file under DIR one after the
//!   other to URL as a streamed multipart upload (as the coordinator sends
//!   FOI), on one keep-alive connection; prints the seconds it took;
//! - `report SAMPLES JSON`: medians of the samples `bench.sh` collected
//!   (`scenario metric value` lines, one per run), the ratio of each scenario
//!   to its floor and its goal; prints the table and writes it as JSON.
//!
//! Not a test: nothing here asserts a timing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["mkfiles", dir, folders, files, bytes] => mkfiles(
            Path::new(dir),
            folders.parse()?,
            files.parse()?,
            bytes.parse()?,
        ),
        ["post", url, dir] => post(url, Path::new(dir)).await,
        ["report", samples, json] => report(Path::new(samples), Path::new(json)),
        _ => anyhow::bail!(
            "usage: bench mkfiles DIR FOLDERS FILES BYTES | post URL DIR | report SAMPLES JSON"
        ),
    }
}

fn mkfiles(dir: &Path, folders: usize, files: usize, bytes: usize) -> anyhow::Result<()> {
    use std::io::Write;
    let folders = folders.max(1);
    // Each file differs (its name leads the content), the rest is filler.
    let filler: Vec<u8> = (0..1024 * 1024).map(|i| b'a' + (i % 23) as u8).collect();
    for f in 0..folders {
        std::fs::create_dir_all(dir.join(format!("r{f:03}")))?;
    }
    for i in 0..files {
        let path = dir
            .join(format!("r{:03}", i % folders))
            .join(format!("f{i:05}.csv"));
        let mut out = std::io::BufWriter::with_capacity(1024 * 1024, std::fs::File::create(&path)?);
        let head = format!("file,{i}\n");
        let mut left = bytes;
        let n = head.len().min(left);
        out.write_all(&head.as_bytes()[..n])?;
        left -= n;
        while left > 0 {
            let n = filler.len().min(left);
            out.write_all(&filler[..n])?;
            left -= n;
        }
        out.flush()?;
    }
    Ok(())
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.path());
    for e in entries {
        if e.file_type()?.is_dir() {
            walk(&e.path(), out)?;
        } else {
            out.push(e.path());
        }
    }
    Ok(())
}

async fn post(url: &str, dir: &Path) -> anyhow::Result<()> {
    let mut files = Vec::new();
    walk(dir, &mut files)?;
    let client = reqwest::Client::new();
    let t = Instant::now();
    for path in &files {
        let file = tokio::fs::File::open(path).await?;
        let len = file.metadata().await?.len();
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
            file,
            1024 * 1024,
        ));
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let part =
            reqwest::multipart::Part::stream_with_length(body, len).file_name(name.into_owned());
        let form = reqwest::multipart::Form::new().part("file", part);
        let resp = client.post(url).multipart(form).send().await?;
        anyhow::ensure!(resp.status().is_success(), "{url}: {}", resp.status());
        resp.bytes().await?;
    }
    println!("{:.3}", t.elapsed().as_secs_f64());
    Ok(())
}

/// How a scenario compares with its floor.
enum Goal {
    /// The coordinator's time at most this many times the floor's.
    TimeAtMost(f64),
    /// The coordinator's throughput at least this fraction of the floor's
    /// (same bytes, so floor time / coordinator time).
    ThroughputAtLeast(f64),
}

struct Row {
    key: &'static str,
    scenario: &'static str,
    floor: &'static str,
    goal: Goal,
}

const ROWS: &[Row] = &[
    Row {
        key: "rescan",
        scenario: "rescan, nothing new",
        floor: "smbclient recursive ls",
        goal: Goal::TimeAtMost(1.0),
    },
    Row {
        key: "small",
        scenario: "first run, small files",
        floor: "smbclient mget + POST loop",
        goal: Goal::TimeAtMost(1.3),
    },
    Row {
        key: "mib",
        scenario: "first run, 1 MiB files",
        floor: "smbclient mget + POST loop",
        goal: Goal::ThroughputAtLeast(0.7),
    },
    Row {
        key: "big",
        scenario: "one big file",
        floor: "smbclient get + one streamed POST",
        goal: Goal::ThroughputAtLeast(0.5),
    },
    Row {
        key: "small_e2e",
        scenario: "small files, end to end",
        floor: "smbclient mget + POST loop",
        goal: Goal::TimeAtMost(1.3),
    },
    Row {
        key: "mib_e2e",
        scenario: "1 MiB files, end to end",
        floor: "smbclient mget + POST loop",
        goal: Goal::ThroughputAtLeast(0.7),
    },
    Row {
        key: "big_e2e",
        scenario: "one big file, end to end",
        floor: "smbclient get + one streamed POST",
        goal: Goal::ThroughputAtLeast(0.5),
    },
    Row {
        key: "delay",
        scenario: "FOI 50 ms + ITM 10 ms, 16 at once",
        floor: "N x 60 ms / 16 + look",
        goal: Goal::TimeAtMost(1.1),
    },
    Row {
        key: "archive",
        scenario: "archive pass of success files",
        floor: "smbclient rename loop, one session",
        goal: Goal::TimeAtMost(1.2),
    },
    Row {
        key: "two",
        scenario: "2 instances, one database",
        floor: "1 instance, same files",
        goal: Goal::TimeAtMost(1.0),
    },
    Row {
        key: "shared2",
        scenario: "one run shared by 2 instances",
        floor: "1 instance, same run",
        goal: Goal::TimeAtMost(0.55),
    },
    Row {
        key: "shared4",
        scenario: "one run shared by 4 instances",
        floor: "1 instance, same run",
        goal: Goal::TimeAtMost(0.30),
    },
    Row {
        key: "verify",
        scenario: "coordinator audit verify",
        floor: "CONTRACT §11 budget: 60 s",
        goal: Goal::TimeAtMost(1.0),
    },
];

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn report(samples: &Path, json: &Path) -> anyhow::Result<()> {
    let mut by: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    let mut meta: BTreeMap<(String, String), String> = BTreeMap::new();
    for line in std::fs::read_to_string(samples)?.lines() {
        let mut it = line.split('\t');
        let (Some(s), Some(m), Some(v)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        match v.parse::<f64>() {
            Ok(x) => by.entry((s.into(), m.into())).or_default().push(x),
            Err(_) => {
                meta.insert((s.into(), m.into()), v.into());
            }
        }
    }
    let get = |s: &str, m: &str| by.get(&(s.into(), m.into())).map(|v| median(v));
    let desc = |s: &str| meta.get(&(s.into(), "desc".into())).cloned();
    let mut out = Vec::new();
    println!(
        "{:<34} {:<42} {:>9} {:>9} {:>7} {:>8} {:>7} {:>8} {:>4}",
        "scenario", "files", "coord s", "floor s", "ratio", "goal", "cpu s", "peak MiB", "met"
    );
    for row in ROWS {
        let (Some(coord), Some(floor)) = (get(row.key, "coord_s"), get(row.key, "floor_s")) else {
            let why = meta
                .get(&(row.key.into(), "skipped".into()))
                .cloned()
                .unwrap_or_else(|| "not run".into());
            println!("{:<34} {why}", row.scenario);
            out.push(serde_json::json!({"key": row.key, "scenario": row.scenario, "skipped": why}));
            continue;
        };
        let (ratio, goal, mut met) = match row.goal {
            Goal::TimeAtMost(g) => (coord / floor, format!("<= {g}x"), coord / floor <= g),
            Goal::ThroughputAtLeast(g) => (floor / coord, format!(">= {g}x"), floor / coord >= g),
        };
        let cpu = get(row.key, "cpu_s");
        let rss_mib = by
            .get(&(row.key.into(), "rss_kib".into()))
            .map(|v| v.iter().copied().fold(0.0, f64::max) / 1024.0);
        let mut goal_text = goal.clone();
        if row.key.starts_with("big") {
            goal_text = format!("{goal}, RSS <= 64 MiB");
            met = met && rss_mib.is_some_and(|r| r <= 64.0);
        }
        let runs = by
            .get(&(row.key.into(), "coord_s".into()))
            .map_or(0, Vec::len);
        let files = desc(row.key).unwrap_or_default();
        println!(
            "{:<34} {:<42} {:>9.2} {:>9.2} {:>7.2} {:>8} {:>7} {:>8} {:>4}",
            row.scenario,
            files,
            coord,
            floor,
            ratio,
            goal,
            cpu.map_or("-".into(), |c| format!("{c:.2}")),
            rss_mib.map_or("-".into(), |r| format!("{r:.0}")),
            if met { "yes" } else { "no" }
        );
        let mut extra = serde_json::Map::new();
        for ((s, m), v) in &by {
            if s == row.key {
                extra.insert(
                    m.clone(),
                    serde_json::json!({"median": median(v), "runs": v}),
                );
            }
        }
        out.push(serde_json::json!({
            "key": row.key,
            "scenario": row.scenario,
            "files": files,
            "floor": row.floor,
            "coordinator_s": coord,
            "floor_s": floor,
            "ratio": ratio,
            "ratio_kind": match row.goal { Goal::TimeAtMost(_) => "time", Goal::ThroughputAtLeast(_) => "throughput" },
            "goal": goal_text,
            "met": met,
            "cpu_s": cpu,
            "peak_rss_mib": rss_mib,
            "runs": runs,
            "samples": extra,
        }));
    }
    let cpu = cpu_table(&get);
    let doc = serde_json::json!({
        "date": meta.get(&("bench".into(), "date".into())),
        "machine": meta.get(&("bench".into(), "machine".into())),
        "rows": out,
        "cpu": cpu,
    });
    std::fs::write(json, serde_json::to_string_pretty(&doc)? + "\n")?;
    println!("written: {}", json.display());
    Ok(())
}

/// CPU per GiB (byte rows) and per 1,000 files (small files): the
/// coordinator's during the run alone (`run_cpu_s`: the `run's CPU` log line,
/// or /proc around the POST end to end) beside the floor tools' own (smbclient
/// and the POST loop). Goal (issue 16): at most 2 s per GiB for the big file.
fn cpu_table(get: &dyn Fn(&str, &str) -> Option<f64>) -> Vec<serde_json::Value> {
    const GIB: f64 = (1u64 << 30) as f64;
    let mut out = Vec::new();
    println!();
    println!(
        "{:<34} {:>9} {:>14} {:>9} {:>14} {:>10}",
        "CPU", "coord s", "coord per", "floor s", "floor per", "goal"
    );
    for (key, base, label) in [
        ("small", "small", "small files, run"),
        ("small_e2e", "small", "small files, end to end"),
        ("mib", "mib", "1 MiB files, run"),
        ("mib_e2e", "mib", "1 MiB files, end to end"),
        ("big", "big", "one big file, run"),
        ("big_e2e", "big", "one big file, end to end"),
    ] {
        let (Some(coord), Some(floor)) = (get(key, "run_cpu_s"), get(base, "floor_cpu_s")) else {
            continue;
        };
        let (per, unit) = if base == "small" {
            (get(base, "files").map(|f| f / 1000.0), "1,000 files")
        } else {
            (get(base, "bytes").map(|b| b / GIB), "GiB")
        };
        let Some(per) = per.filter(|p| *p > 0.0) else {
            continue;
        };
        let goal = base == "big";
        let met = coord / per <= 2.0;
        println!(
            "{:<34} {:>9.2} {:>14} {:>9.2} {:>14} {:>10}",
            label,
            coord,
            format!("{:.2} s/{unit}", coord / per),
            floor,
            format!("{:.2} s/{unit}", floor / per),
            if !goal {
                "-".to_string()
            } else if met {
                "<= 2 yes".to_string()
            } else {
                "<= 2 no".to_string()
            },
        );
        out.push(serde_json::json!({
            "key": key,
            "coordinator_cpu_s": coord,
            "floor_cpu_s": floor,
            "unit": unit,
            "coordinator_per_unit": coord / per,
            "floor_per_unit": floor / per,
            "goal": goal.then_some("<= 2 s per GiB"),
            "met": goal.then_some(met),
        }));
    }
    out
}
