//! Logging: `tracing` to stderr, filtered by `RUST_LOG` (default `info`: ours,
//! and the SMB client's connection set-up), JSON lines when `LOG_FORMAT=json`.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber (once; later calls are no-ops).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if std::env::var("LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// CPU time (user + system) this process has used so far, all threads,
/// from `/proc/self/stat` (10 ms steps); `None` where there is no procfs.
/// A run logs its share (`cpu_s`), which is what the benchmark reports per
/// GiB and per 1,000 files.
pub fn process_cpu() -> Option<std::time::Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    cpu_of_stat(&stat)
}

/// Fields 14 and 15 (utime, stime) of a `/proc/<pid>/stat` line, in the
/// kernel's user-visible clock ticks (USER_HZ, 100 on Linux).
fn cpu_of_stat(stat: &str) -> Option<std::time::Duration> {
    // The command name (field 2) may hold spaces; fields after its ')' don't.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(std::time::Duration::from_millis((utime + stime) * 10))
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_of_a_stat_line() {
        let line = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 10 0 0 0 150 25 0 0 20 0 9 0 1 1 1";
        assert_eq!(
            super::cpu_of_stat(line),
            Some(std::time::Duration::from_millis(1750))
        );
        assert!(super::process_cpu().is_some());
    }
}
