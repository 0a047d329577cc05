//! The status page in a real browser (Debian's chromium, headless, driven
//! through chromedriver), used as a person uses it: by what is on screen. Rows
//! are found by their file name, buttons by their text, and a dialog's fields
//! are the ones that are displayed, in the order they appear; no element id is
//! used to act. What the operator did is then checked through the API.

use crate::fakes::FoiBehavior;
use crate::helpers::{Opts, TestApp, spawn_app};
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::Value;
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

/// Files that FOI rejects, one run: `extraction_file_failed`, awaiting an
/// operator. Their ids, in the order of `names`.
async fn failed_files(app: &mut TestApp, names: &[&str]) -> Vec<i64> {
    app.fakes.set_foi(FoiBehavior::Raw(422, "{}".into()));
    for name in names {
        app.put("acme", name, b"not a remittance").await;
    }
    app.run_ok().await;
    let rows = app.files().await;
    names
        .iter()
        .map(|name| {
            let row = rows
                .iter()
                .find(|r| r.file_name == *name)
                .unwrap_or_else(|| panic!("a row for {name}"));
            assert_eq!(row.status, "extraction_file_failed", "{name}");
            row.id
        })
        .collect()
}

/// `GET …/files/{id}` with the token.
async fn file(app: &TestApp, id: i64) -> Value {
    app.http
        .get(format!("{}/api/v1/coordinator/files/{id}", app.base_url))
        .bearer_auth(app.token.clone().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The file has `status` and its last event carries `reason`.
fn recorded(file: &Value, status: &str, reason: &str) -> bool {
    file["status"] == status
        && file["events"]
            .as_array()
            .and_then(|e| e.last())
            .is_some_and(|e| e["detail"].to_string().contains(reason))
}

/// Only the elements among `found` that are displayed, in their order.
async fn displayed(found: Vec<Element>) -> Vec<Element> {
    let mut shown = Vec::new();
    for e in found {
        if e.is_displayed().await.unwrap_or(false) {
            shown.push(e);
        }
    }
    shown
}

/// The one displayed button inside `scope` whose text is `text`.
async fn button(scope: &Element, text: &str) -> Element {
    let xpath = format!(".//button[normalize-space()='{text}']");
    let mut shown = displayed(scope.find_all(Locator::XPath(&xpath)).await.unwrap()).await;
    assert_eq!(shown.len(), 1, "one visible {text:?} button");
    shown.pop().unwrap()
}

/// The open dialog, once there is one.
async fn open_dialog(b: &Client) -> Element {
    b.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("dialog[open]"))
        .await
        .expect("a dialog opens")
}

/// The fields a person sees inside `scope`, in document order, each with the
/// text of its label.
async fn visible_fields(b: &Client, scope: &Element) -> Vec<(Element, String)> {
    let all = scope
        .find_all(Locator::Css("input, textarea, select"))
        .await
        .unwrap();
    let mut fields = Vec::new();
    for field in displayed(all).await {
        let label = b
            .execute(
                "const l = arguments[0].labels; \
                 return l && l.length ? l[0].textContent.replace(/\\s+/g, ' ').trim() : '';",
                vec![serde_json::to_value(&field).unwrap()],
            )
            .await
            .unwrap();
        fields.push((field, label.as_str().unwrap_or_default().to_string()));
    }
    fields
}

fn labels(fields: &[(Element, String)]) -> Vec<&str> {
    fields.iter().map(|(_, l)| l.as_str()).collect()
}

/// The page's own message inside the dialog (an alert a person can read).
async fn dialog_alert(dialog: &Element) -> String {
    let shown = displayed(dialog.find_all(Locator::Css("[role=alert]")).await.unwrap()).await;
    let mut text = String::new();
    for e in shown {
        text.push_str(&e.text().await.unwrap());
    }
    text
}

/// The row of the section "Files awaiting an operator" that shows `name`.
fn awaiting_row(name: &str) -> String {
    format!(
        "//section[h2[normalize-space()='Files awaiting an operator']]\
         //tr[td[normalize-space()='{name}']]"
    )
}

/// The value shown next to the term `term` (the backlog's `<dl>`).
async fn shown_for(b: &Client, term: &str) -> String {
    let xpath = format!("//dt[normalize-space()='{term}']/following-sibling::dd[1]");
    b.find(Locator::XPath(&xpath))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// With IT_SCREENSHOT=<png>: the page there, and each dialog next to it
/// (`<png>` with `-retry`, `-resolve` before the extension).
async fn screenshot(b: &Client, suffix: &str) {
    let Ok(path) = std::env::var("IT_SCREENSHOT") else {
        return;
    };
    let path = std::path::PathBuf::from(path);
    let path = if suffix.is_empty() {
        path
    } else {
        let stem = path.file_stem().unwrap().to_string_lossy();
        path.with_file_name(format!("{stem}-{suffix}.png"))
    };
    std::fs::write(path, b.screenshot().await.unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_retries_and_resolves_failed_files_from_the_status_page() {
    let mut app = spawn_app(Opts::default()).await;
    let ids = failed_files(&mut app, &["rejected.csv", "garbled.csv"]).await;
    let (retried, resolved) = (ids[0], ids[1]);
    let driver = Driver::start().await;
    let b = driver.browser().await;

    b.goto(&app.base_url).await.unwrap();
    assert_eq!(b.title().await.unwrap(), "coordinator · status");
    b.wait()
        .for_element(Locator::Css("#ready.ok"))
        .await
        .expect("readiness shown");
    // Sign in: the field labelled "API token", then the button "Use token".
    let body = b.find(Locator::Css("body")).await.unwrap();
    let token = visible_fields(&b, &body)
        .await
        .into_iter()
        .find(|(_, label)| label == "API token")
        .expect("a field labelled API token")
        .0;
    token
        .send_keys(app.token.as_deref().unwrap())
        .await
        .unwrap();
    button(&body, "Use token").await.click().await.unwrap();
    for name in ["rejected.csv", "garbled.csv"] {
        let tr = b
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::XPath(&awaiting_row(name)))
            .await
            .unwrap_or_else(|_| panic!("{name} is listed as awaiting"));
        let text = tr.text().await.unwrap();
        assert!(text.contains("extraction_file_failed"), "{text}");
    }
    // The backlog comes from /metrics: numbers, not the placeholder.
    for term in [
        "IQube notifications waiting",
        "Files waiting for the archive",
    ] {
        let text = shown_for(&b, term).await;
        assert!(text.parse::<u64>().is_ok(), "{term} shows {text:?}");
    }
    screenshot(&b, "").await;

    // Retry: the dialog asks for the reason and nothing else.
    let tr = b
        .find(Locator::XPath(&awaiting_row("rejected.csv")))
        .await
        .unwrap();
    button(&tr, "Retry").await.click().await.unwrap();
    let dialog = open_dialog(&b).await;
    let fields = visible_fields(&b, &dialog).await;
    assert_eq!(
        labels(&fields),
        ["Reason"],
        "the retry dialog shows the reason only"
    );
    // Confirming without a reason says so, and sends nothing.
    button(&dialog, "Retry").await.click().await.unwrap();
    let alert = dialog_alert(&dialog).await;
    assert!(alert.contains("reason"), "blank reason: {alert:?}");
    assert_eq!(
        file(&app, retried).await["status"],
        "extraction_file_failed"
    );
    fields[0]
        .0
        .send_keys("FOI template fixed; send it again")
        .await
        .unwrap();
    let alert = dialog_alert(&dialog).await;
    assert!(
        alert.is_empty(),
        "the message goes once a reason is typed: {alert:?}"
    );
    screenshot(&b, "retry").await;
    button(&dialog, "Retry").await.click().await.unwrap();
    app.eventually(
        20,
        "retry_requested with the reason, through the API",
        || async {
            recorded(
                &file(&app, retried).await,
                "retry_requested",
                "FOI template fixed; send it again",
            )
        },
    )
    .await;
    // The page refreshes after the action: the dialog is gone, and so is the
    // retried file from the list; the other one still waits.
    app.eventually(
        20,
        "the retried file no longer listed as awaiting",
        || async {
            b.find(Locator::XPath(&awaiting_row("rejected.csv")))
                .await
                .is_err()
                && b.find(Locator::Css("dialog[open]")).await.is_err()
        },
    )
    .await;

    // Resolve: the verdict word, then the reason.
    let tr = b
        .find(Locator::XPath(&awaiting_row("garbled.csv")))
        .await
        .unwrap();
    button(&tr, "Resolve").await.click().await.unwrap();
    let dialog = open_dialog(&b).await;
    let fields = visible_fields(&b, &dialog).await;
    let shown = labels(&fields);
    assert!(
        shown.len() == 2 && shown[0].starts_with("Verdict") && shown[1] == "Reason",
        "the resolve dialog shows the verdict, then the reason: {shown:?}"
    );
    // A verdict that is not a word of a-z, 0-9, _ is explained on the page,
    // and nothing is sent.
    fields[0].0.send_keys("Resent by hand").await.unwrap();
    fields[1]
        .0
        .send_keys("sent to ITM by hand, ticket 4411")
        .await
        .unwrap();
    button(&dialog, "Resolve").await.click().await.unwrap();
    let alert = dialog_alert(&dialog).await;
    assert!(
        alert.contains("Resent by hand") && alert.contains("lowercase letters"),
        "invalid verdict: {alert:?}"
    );
    screenshot(&b, "resolve").await;
    assert_eq!(
        file(&app, resolved).await["status"],
        "extraction_file_failed"
    );
    fields[0].0.clear().await.unwrap();
    fields[0].0.send_keys("resent_by_hand").await.unwrap();
    button(&dialog, "Resolve").await.click().await.unwrap();
    app.eventually(
        20,
        "ops_resent_by_hand with the reason, through the API",
        || async {
            recorded(
                &file(&app, resolved).await,
                "ops_resent_by_hand",
                "sent to ITM by hand, ticket 4411",
            )
        },
    )
    .await;
    app.eventually(
        20,
        "the resolved file no longer listed as awaiting",
        || async {
            b.find(Locator::XPath(&awaiting_row("garbled.csv")))
                .await
                .is_err()
                && b.find(Locator::Css("dialog[open]")).await.is_err()
        },
    )
    .await;
    b.close().await.unwrap();
    app.finish().await;
}

/// A named token with `role`, made through the API with the bootstrap token.
async fn named_token(app: &TestApp, name: &str, role: &str) -> String {
    let resp = app
        .http
        .post(format!("{}/api/v1/coordinator/tokens", app.base_url))
        .bearer_auth(app.token.clone().unwrap())
        .json(&serde_json::json!({"name": name, "role": role}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().await.unwrap();
    body["secret"].as_str().unwrap().to_string()
}

/// Types `token` into the field labelled "API token" and uses it.
async fn sign_in(b: &Client, token: &str) {
    let body = b.find(Locator::Css("body")).await.unwrap();
    if let Ok(forget) = body
        .find(Locator::XPath(".//button[normalize-space()='Forget']"))
        .await
        && forget.is_displayed().await.unwrap_or(false)
    {
        forget.click().await.unwrap();
    }
    let field = visible_fields(b, &body)
        .await
        .into_iter()
        .find(|(_, label)| label == "API token")
        .expect("a field labelled API token")
        .0;
    field.send_keys(token).await.unwrap();
    button(&body, "Use token").await.click().await.unwrap();
}

/// Opens the retry dialog of `name`, gives a reason and confirms.
async fn retry_from_page(b: &Client, name: &str, reason: &str) -> Element {
    let tr = b
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::XPath(&awaiting_row(name)))
        .await
        .unwrap_or_else(|_| panic!("{name} is listed as awaiting"));
    button(&tr, "Retry").await.click().await.unwrap();
    let dialog = open_dialog(b).await;
    let fields = visible_fields(b, &dialog).await;
    fields[0].0.send_keys(reason).await.unwrap();
    button(&dialog, "Retry").await.click().await.unwrap();
    dialog
}

/// Issue 14: with a `viewer` token (a named one) the page shows the runs
/// and the files, and its retry is refused on screen as `forbidden`
/// (nothing changes, the refusal is in the audit trail); with an
/// `operator` token (a JWT of the identity provider) the same retry goes
/// through, in his name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_sees_the_page_and_is_forbidden_to_retry_an_operator_is_not() {
    use crate::idp::{Alg, FakeIdp};
    let idp = FakeIdp::start().await;
    let mut app = spawn_app(Opts {
        flags: vec![
            ("--oidc-issuer", idp.issuer().to_string()),
            ("--oidc-audience", idp.audience().to_string()),
            ("--oidc-jwks-url", idp.jwks_url().to_string()),
        ],
        ..Opts::default()
    })
    .await;
    let id = failed_files(&mut app, &["rejected.csv"]).await[0];
    let viewer = named_token(&app, "vera", "viewer").await;
    let operator = idp.token(Alg::Es256, idp.claims("otto", &["operator"]));
    let driver = Driver::start().await;
    let b = driver.browser().await;
    b.goto(&app.base_url).await.unwrap();
    b.wait()
        .for_element(Locator::Css("#ready.ok"))
        .await
        .expect("readiness shown");

    sign_in(&b, &viewer).await;
    let run = b
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css("#runs tbody tr"))
        .await
        .expect("the viewer sees the runs");
    assert!(run.text().await.unwrap().contains("completed"));
    let dialog = retry_from_page(&b, "rejected.csv", "viewer tries").await;
    app.eventually(20, "the refusal shown in the dialog", || async {
        dialog_alert(&dialog).await.contains("forbidden")
    })
    .await;
    let alert = dialog_alert(&dialog).await;
    assert!(alert.contains("403"), "{alert:?}");
    assert_eq!(file(&app, id).await["status"], "extraction_file_failed");
    let refused: (String, String) =
        sqlx::query_as("SELECT actor, outcome FROM audit_events WHERE action = 'file.retry'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(refused, ("vera".into(), "refused".into()));
    button(&dialog, "Cancel").await.click().await.unwrap();

    sign_in(&b, &operator).await;
    retry_from_page(&b, "rejected.csv", "operator sends it again").await;
    app.eventually(
        20,
        "retry_requested through the operator's token",
        || async {
            recorded(
                &file(&app, id).await,
                "retry_requested",
                "operator sends it again",
            )
        },
    )
    .await;
    let detail = file(&app, id).await["events"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()["detail"]
        .clone();
    assert_eq!(detail["actor"], "otto", "{detail}");
    b.close().await.unwrap();
    app.finish().await;
}
