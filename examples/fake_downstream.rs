//! Fake FOI, ITM and IQube for trying the coordinator on one machine
//! (`scripts/demo.sh`, `scripts/bench.sh`). The same fakes the integration
//! suite uses: FOI extracts every file, ITM accepts every result, IQube
//! accepts every notification. Prints the three URLs, then serves until killed.
//!
//! For the benchmark, from the environment:
//! - `FAKE_FOI_DELAY_MS`, `FAKE_ITM_DELAY_MS`: answer (successfully) after this long;
//! - `FAKE_ITM_FAIL=1`: ITM rejects every result (`itm_failed`, the file stays
//!   in the source).
//!
//! FOI's endpoint is also the benchmark's plain HTTP sink: it reads a
//! multipart upload to the end, hashing it, and answers at once.

#[path = "../tests/it/fakes.rs"]
#[allow(dead_code)]
mod fakes;

use std::time::Duration;

fn millis(var: &str) -> Option<Duration> {
    let v = std::env::var(var).ok()?;
    let ms: u64 = v
        .parse()
        .unwrap_or_else(|_| panic!("{var}: not a number of milliseconds: {v}"));
    (ms > 0).then(|| Duration::from_millis(ms))
}

#[tokio::main]
async fn main() {
    let f = fakes::Fakes::start(None).await;
    if let Some(d) = millis("FAKE_FOI_DELAY_MS") {
        f.set_foi(fakes::FoiBehavior::Slow(d));
    }
    if let Some(d) = millis("FAKE_ITM_DELAY_MS") {
        f.set_itm(fakes::ItmBehavior::Slow(d));
    }
    if std::env::var("FAKE_ITM_FAIL").is_ok_and(|v| v == "1") {
        f.set_itm(fakes::ItmBehavior::Failed);
    }
    println!("FOI_API_URL={}", f.foi_url());
    println!("ITM_API_URL={}", f.itm_url());
    println!("IQUBE_API_URL={}", f.iqube_url());
    let _ = tokio::signal::ctrl_c().await;
}
