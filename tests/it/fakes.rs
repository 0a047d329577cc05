//! Fakes of the other teams' services (FOI, ITM, IQube), following CONTRACT §8,
//! as HTTP servers in the test process. Each records what it received and can
//! be told how to answer, including hanging past a timeout and resetting.

use axum::extract::{Multipart, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use md5::{Digest, Md5};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// How FOI answers.
#[derive(Debug, Clone)]
pub enum FoiBehavior {
    /// 200 with this JSON body.
    Json(Value),
    /// This status and raw body.
    Raw(u16, String),
    /// Never answer (the coordinator's timeout fires).
    Hang,
    /// The normal happy answer after this long.
    Slow(Duration),
}

impl FoiBehavior {
    /// The normal happy answer.
    pub fn success() -> Self {
        Self::Json(json!({"result": [{"invoice": "INV-1", "amount": "100.00"}], "failed": []}))
    }
}

/// How ITM answers.
#[derive(Debug, Clone)]
pub enum ItmBehavior {
    /// 200 `{"status": "success"}`.
    Success,
    /// 200 `{"status": "failed", ...}`.
    Failed,
    /// This status and raw body.
    Raw(u16, String),
    /// Success after this long.
    Slow(Duration),
    /// Success once the test adds a permit to this semaphore (one per
    /// request), so a test can act while ITM holds a request.
    Held(Arc<tokio::sync::Semaphore>),
    /// Never answer.
    Hang,
}

/// How IQube answers.
#[derive(Debug, Clone)]
pub enum IqubeBehavior {
    /// 200.
    Ok,
    /// 503.
    Down,
    /// Accepts the connection and the request, never answers.
    Hang,
    /// 422 for every `Idempotency-Key` starting with this, 200 for the others.
    RejectKeysStartingWith(String),
    /// Takes the notification at once (it counts as received) and answers
    /// 200 after this long.
    Slow(Duration),
}

/// One upload FOI received.
#[derive(Debug, Clone)]
pub struct FoiCall {
    /// The `{remitter}` path segment as received (decoded by the router).
    pub remitter: String,
    /// The raw request path (still percent-encoded).
    pub raw_path: String,
    /// Part name of the file part.
    pub part_name: String,
    /// File name of the part.
    pub file_name: String,
    /// MD5 of the bytes.
    pub md5: String,
    /// Byte count.
    pub size: usize,
}

/// One call with a JSON body.
#[derive(Debug, Clone)]
pub struct JsonCall {
    /// Body.
    pub body: Value,
    /// `Idempotency-Key` header.
    pub idempotency_key: Option<String>,
}

#[derive(Default)]
struct Inner {
    foi_calls: Vec<FoiCall>,
    itm_calls: Vec<JsonCall>,
    iqube_calls: Vec<JsonCall>,
    iqube_attempts: usize,
}

/// Accepts TLS connections with the given server configuration. A client
/// that refuses the certificate ends here, before it could send a request.
struct TlsListener {
    tcp: TcpListener,
    tls: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((sock, addr)) = self.tcp.accept().await else {
                continue;
            };
            let handshake = self.tls.accept(sock);
            if let Ok(Ok(io)) = tokio::time::timeout(Duration::from_secs(5), handshake).await {
                return (io, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// The three fakes, on one server (plus a listener that resets connections).
#[derive(Clone)]
pub struct Fakes {
    inner: Arc<Mutex<Inner>>,
    foi: Arc<Mutex<FoiBehavior>>,
    itm: Arc<Mutex<ItmBehavior>>,
    iqube: Arc<Mutex<IqubeBehavior>>,
    /// `http://127.0.0.1:port`, or `https://` when served over TLS.
    pub base: String,
    /// A URL whose server resets every connection after reading the request.
    pub reset_url: String,
}

impl Fakes {
    /// Starts the fakes on free loopback ports; over TLS with `tls`.
    pub async fn start(tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let base = format!("{scheme}://{}", listener.local_addr().unwrap());
        let reset = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let reset_url = format!(
            "http://{}/extract/{{remitter}}",
            reset.local_addr().unwrap()
        );
        let fakes = Fakes {
            inner: Arc::default(),
            foi: Arc::new(Mutex::new(FoiBehavior::success())),
            itm: Arc::new(Mutex::new(ItmBehavior::Success)),
            iqube: Arc::new(Mutex::new(IqubeBehavior::Ok)),
            base,
            reset_url,
        };
        let app = Router::new()
            .route("/extract/{remitter}", post(foi))
            .route("/itm/submit", post(itm))
            .route("/iqube/notify", post(iqube))
            .with_state(fakes.clone())
            .layer(axum::extract::DefaultBodyLimit::disable());
        match tls {
            None => tokio::spawn(async move { axum::serve(listener, app).await }),
            Some(config) => {
                let tls = TlsListener {
                    tcp: listener,
                    tls: config.into(),
                };
                tokio::spawn(async move { axum::serve(tls, app).await })
            }
        };
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = reset.accept().await else {
                    break;
                };
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let _ =
                        tokio::time::timeout(Duration::from_millis(200), sock.read(&mut buf)).await;
                    #[allow(deprecated)] // zero linger: drop sends RST and does not block
                    let _ = sock.set_linger(Some(Duration::ZERO));
                    drop(sock);
                });
            }
        });
        fakes
    }

    /// `FOI_API_URL` for the coordinator.
    pub fn foi_url(&self) -> String {
        format!("{}/extract/{{remitter}}", self.base)
    }
    /// `ITM_API_URL`.
    pub fn itm_url(&self) -> String {
        format!("{}/itm/submit", self.base)
    }
    /// `IQUBE_API_URL`.
    pub fn iqube_url(&self) -> String {
        format!("{}/iqube/notify", self.base)
    }

    /// Sets FOI's answer.
    pub fn set_foi(&self, b: FoiBehavior) {
        *self.foi.lock().unwrap() = b;
    }
    /// Sets ITM's answer.
    pub fn set_itm(&self, b: ItmBehavior) {
        *self.itm.lock().unwrap() = b;
    }
    /// Sets IQube's answer.
    pub fn set_iqube(&self, b: IqubeBehavior) {
        *self.iqube.lock().unwrap() = b;
    }
    /// Uploads FOI received.
    pub fn foi_calls(&self) -> Vec<FoiCall> {
        self.inner.lock().unwrap().foi_calls.clone()
    }
    /// File names FOI received, in order.
    pub fn foi_names(&self) -> Vec<String> {
        self.foi_calls().into_iter().map(|c| c.file_name).collect()
    }
    /// Submissions ITM received.
    pub fn itm_calls(&self) -> Vec<JsonCall> {
        self.inner.lock().unwrap().itm_calls.clone()
    }
    /// Notifications IQube accepted.
    pub fn iqube_calls(&self) -> Vec<JsonCall> {
        self.inner.lock().unwrap().iqube_calls.clone()
    }
    /// Notification attempts, accepted or not.
    pub fn iqube_attempts(&self) -> usize {
        self.inner.lock().unwrap().iqube_attempts
    }
}

fn key(h: &HeaderMap) -> Option<String> {
    h.get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

async fn foi(
    State(f): State<Fakes>,
    Path(remitter): Path<String>,
    uri: axum::http::Uri,
    mut mp: Multipart,
) -> Response {
    let mut call = FoiCall {
        remitter,
        raw_path: uri.path().to_string(),
        part_name: String::new(),
        file_name: String::new(),
        md5: String::new(),
        size: 0,
    };
    while let Ok(Some(mut field)) = mp.next_field().await {
        call.part_name = field.name().unwrap_or_default().to_string();
        call.file_name = field.file_name().unwrap_or_default().to_string();
        let mut h = Md5::new();
        while let Ok(Some(chunk)) = field.chunk().await {
            h.update(&chunk);
            call.size += chunk.len();
        }
        call.md5 = hex::encode(h.finalize());
    }
    f.inner.lock().unwrap().foi_calls.push(call);
    let behavior = f.foi.lock().unwrap().clone();
    match behavior {
        FoiBehavior::Json(v) => Json(v).into_response(),
        FoiBehavior::Raw(code, body) => (StatusCode::from_u16(code).unwrap(), body).into_response(),
        FoiBehavior::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::GATEWAY_TIMEOUT.into_response()
        }
        FoiBehavior::Slow(d) => {
            tokio::time::sleep(d).await;
            match FoiBehavior::success() {
                FoiBehavior::Json(v) => Json(v).into_response(),
                _ => unreachable!("success() is a JSON answer"),
            }
        }
    }
}

async fn itm(State(f): State<Fakes>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    f.inner.lock().unwrap().itm_calls.push(JsonCall {
        body,
        idempotency_key: key(&headers),
    });
    let behavior = f.itm.lock().unwrap().clone();
    match behavior {
        ItmBehavior::Success => Json(json!({"status": "success", "id": "itm-1"})).into_response(),
        ItmBehavior::Failed => {
            Json(json!({"status": "failed", "error": "rejected by ITM"})).into_response()
        }
        ItmBehavior::Raw(code, body) => (StatusCode::from_u16(code).unwrap(), body).into_response(),
        ItmBehavior::Slow(d) => {
            tokio::time::sleep(d).await;
            Json(json!({"status": "success", "id": "itm-slow"})).into_response()
        }
        ItmBehavior::Held(release) => {
            if let Ok(permit) = release.acquire().await {
                permit.forget();
            }
            Json(json!({"status": "success", "id": "itm-held"})).into_response()
        }
        ItmBehavior::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::GATEWAY_TIMEOUT.into_response()
        }
    }
}

async fn iqube(State(f): State<Fakes>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    let behavior = f.iqube.lock().unwrap().clone();
    let key = key(&headers);
    let accept = {
        let mut inner = f.inner.lock().unwrap();
        inner.iqube_attempts += 1;
        let accept = match &behavior {
            IqubeBehavior::Ok | IqubeBehavior::Slow(_) => true,
            IqubeBehavior::Down | IqubeBehavior::Hang => false,
            IqubeBehavior::RejectKeysStartingWith(p) => {
                !key.as_deref().unwrap_or_default().starts_with(p.as_str())
            }
        };
        if accept {
            inner.iqube_calls.push(JsonCall {
                body,
                idempotency_key: key,
            });
        }
        accept
    };
    match behavior {
        IqubeBehavior::Slow(d) => {
            tokio::time::sleep(d).await;
            Json(json!({"ok": true})).into_response()
        }
        _ if accept => Json(json!({"ok": true})).into_response(),
        IqubeBehavior::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::GATEWAY_TIMEOUT.into_response()
        }
        IqubeBehavior::Down => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        _ => (StatusCode::UNPROCESSABLE_ENTITY, "rejected").into_response(),
    }
}
