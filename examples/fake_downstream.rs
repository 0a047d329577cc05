//! Fake FOI, ITM and IQube for trying the coordinator on one machine
//! (`scripts/demo.sh`). The same fakes the integration suite uses: FOI
//! extracts every file, ITM accepts every result, IQube accepts every
//! notification. Prints the three URLs, then serves until killed.

#[path = "../tests/it/fakes.rs"]
#[allow(dead_code)]
mod fakes;

#[tokio::main]
async fn main() {
    let f = fakes::Fakes::start(None).await;
    println!("FOI_API_URL={}", f.foi_url());
    println!("ITM_API_URL={}", f.itm_url());
    println!("IQUBE_API_URL={}", f.iqube_url());
    let _ = tokio::signal::ctrl_c().await;
}
