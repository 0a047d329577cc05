//! The status page in a real browser (Debian's chromium, headless, driven
//! through chromedriver): load it, enter the token, see a failed file, press
//! retry, and find `retry_requested` through the API.

use crate::fakes::FoiBehavior;
use crate::helpers::{Opts, TestApp, spawn_app};
use fantoccini::{Client, ClientBuilder, Locator};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A chromedriver on a free loopback port, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let bin = std::env::var("IT_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let child = Command::new(&bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{bin} did not start ({e}): scripts/test.sh installs chromium-driver")
            });
        let url = format!("http://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver did not listen"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Driver { child, url }
    }

    async fn browser(&self) -> Client {
        let caps = serde_json::json!({
            "goog:chromeOptions": {
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                         "--disable-gpu", "--window-size=1280,1000"]
            }
        });
        let serde_json::Value::Object(caps) = caps else {
            unreachable!()
        };
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a headless chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One file that FOI rejects: `extraction_file_failed`, awaiting an operator.
async fn failed_file(app: &mut TestApp) -> i64 {
    app.fakes.set_foi(FoiBehavior::Raw(422, "{}".into()));
    app.put("acme", "rejected.csv", b"not a remittance").await;
    app.run_ok().await;
    let row = app.files().await.pop().expect("a row");
    assert_eq!(row.status, "extraction_file_failed");
    row.id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_retries_a_failed_file_from_the_status_page() {
    let mut app = spawn_app(Opts::default()).await;
    let id = failed_file(&mut app).await;
    let driver = Driver::start().await;
    let b = driver.browser().await;

    b.goto(&app.base_url).await.unwrap();
    assert_eq!(b.title().await.unwrap(), "coordinator · status");
    b.wait()
        .for_element(Locator::Css("#ready.ok"))
        .await
        .expect("readiness shown");
    b.find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(app.token.as_deref().unwrap())
        .await
        .unwrap();
    b.find(Locator::Id("use-token"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let row = format!("#awaiting tr[data-id='{id}']");
    let tr = b
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css(&row))
        .await
        .expect("the failed file is listed");
    let text = tr.text().await.unwrap();
    assert!(
        text.contains("rejected.csv") && text.contains("extraction_file_failed"),
        "{text}"
    );
    // The backlog comes from /metrics: numbers, not the placeholder.
    for gauge in ["outbox", "archive"] {
        let text = b
            .find(Locator::Id(gauge))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            text.parse::<u64>().is_ok(),
            "{gauge} backlog shows {text:?}"
        );
    }
    if let Ok(path) = std::env::var("IT_SCREENSHOT") {
        std::fs::write(path, b.screenshot().await.unwrap()).unwrap();
    }

    tr.find(Locator::Css("button.retry"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.find(Locator::Id("act-reason"))
        .await
        .unwrap()
        .send_keys("FOI template fixed; send it again")
        .await
        .unwrap();
    b.find(Locator::Id("act-confirm"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    app.eventually(20, "retry_requested through the API", || async {
        let resp = app
            .http
            .get(format!("{}/api/v1/coordinator/files/{id}", app.base_url))
            .bearer_auth(app.token.clone().unwrap())
            .send()
            .await
            .unwrap();
        let body: serde_json::Value = resp.json().await.unwrap();
        body["status"] == "retry_requested"
            && body["events"]
                .as_array()
                .and_then(|e| e.last())
                .is_some_and(|e| e["detail"].to_string().contains("FOI template fixed"))
    })
    .await;
    // The page refreshes after the action and lists it no more.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while b.find(Locator::Css(&row)).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the retried file is still listed as awaiting"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    b.close().await.unwrap();
    app.finish().await;
}
