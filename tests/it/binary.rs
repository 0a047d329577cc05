//! The real `coordinator serve` process, configured only through CONTRACT §3
//! variables (secrets from `_FILE`s), answering runs over HTTP and stopping
//! cleanly on SIGTERM, with no secret in its log.

use crate::helpers::{Opts, prepare};
use std::process::{Command, Stdio};
use std::time::Duration;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_binary_runs_over_http_and_stops_gracefully() {
    let p = prepare(Opts::default()).await;
    let a = p.args.clone();
    let dir = tempfile::tempdir().unwrap();
    let token = p.token.clone().unwrap();
    let smb_password = a.smb_password.clone().unwrap();
    std::fs::write(dir.path().join("token"), format!("{token}\n")).unwrap();
    std::fs::write(dir.path().join("smbpw"), format!("{smb_password}\n")).unwrap();
    let log_path = dir.path().join("coordinator.log");
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "debug,pavao=off")
        .env("ENV", "prod")
        .env("BIND_ADDR", format!("127.0.0.1:{port}"))
        .env("API_TOKEN_FILE", dir.path().join("token"))
        .env("DATABASE_URL", &p.db_url)
        .env("SMB_HOST", a.smb_host.clone().unwrap())
        .env("SMB_PORT", a.smb_port.clone().unwrap())
        .env("SMB_SHARE", a.smb_share.clone().unwrap())
        .env("SMB_USERNAME", a.smb_username.clone().unwrap())
        .env("SMB_PASSWORD_FILE", dir.path().join("smbpw"))
        .env("SMB_SOURCE_DIR", &p.source_dir)
        .env("SMB_ARCHIVE_DIR", &p.archive_dir)
        .env("FOI_API_URL", p.fakes.foi_url())
        .env("ITM_API_URL", p.fakes.itm_url())
        .env("IQUBE_API_URL", p.fakes.iqube_url())
        .env("STABLE_MIN_AGE_SECS", "0")
        .env("STABLE_CHECK_INTERVAL_SECS", "0")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("start coordinator serve");

    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{base}/healthz")).send().await
            && r.status() == 200
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "serve did not answer /healthz: {}",
            std::fs::read_to_string(&log_path).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let dirpath = format!("{}/acme", p.source_dir);
    use coordinator::source::FileSource;
    p.remitter_share.mkdir_all(&dirpath).await.unwrap();
    p.remitter_share
        .write_file(
            &format!("{dirpath}/remit_20240101.csv"),
            b"a,b\n1,2\n".to_vec(),
        )
        .await
        .unwrap();

    let unauthorized = http
        .post(format!("{base}/api/v1/coordinator/runs"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
    let resp = http
        .post(format!("{base}/api/v1/coordinator/runs"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["summary"]["succeeded"], 1, "{body}");
    assert_eq!(p.fakes.itm_calls().len(), 1);
    let archived = p
        .share_path
        .join(&p.archive_dir)
        .join("acme/remit_20240101.csv");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !archived.is_file() {
        assert!(tokio::time::Instant::now() < deadline, "not archived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "serve did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert_eq!(exit.code(), Some(0), "{log}");
    assert!(log.contains("coordinator listening"), "{log}");
    for secret in [token.as_str(), smb_password.as_str()] {
        assert!(!log.contains(secret), "a secret reached the log");
    }
}
