//! Transport security (CONTRACT §3): HTTPS downstreams verified against the
//! system's roots plus `EXTRA_CA_CERTS_FILE`, never retried in plaintext;
//! Postgres with `sslmode=require` and `verify-full`; a share that requires
//! SMB3 encryption; SMB signing as `SMB_SIGNING` and the server ask.
//! Certificates come from a throwaway CA made here.

use crate::fakes::ItmBehavior;
use crate::helpers::{Opts, keep_log, spawn_app};
use crate::outages::PrivateServers;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use sqlx::postgres::PgPoolOptions;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::PrivateKeyDer;

/// A certificate authority that exists for one test.
struct TestCa {
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        TestCa {
            ca: CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    /// Writes the CA certificate (PEM) into `dir`.
    fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, self.ca.pem()).unwrap();
        path
    }

    /// A server certificate for 127.0.0.1 and localhost, signed by this CA.
    fn server_cert(&self) -> (rcgen::Certificate, KeyPair) {
        let params = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
        let key = KeyPair::generate().unwrap();
        (params.signed_by(&key, &self.ca).unwrap(), key)
    }

    /// What the fakes serve with.
    fn server_config(&self) -> Arc<ServerConfig> {
        let (cert, key) = self.server_cert();
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        Arc::new(config)
    }
}

/// Turns TLS on in the private Postgres with a certificate from `ca`, makes
/// it refuse connections without TLS, and restarts it.
fn postgres_tls_only(servers: &PrivateServers, ca: &TestCa) {
    let data = PathBuf::from(&servers.vars["IT_PG_DATA"]);
    let (cert, key) = ca.server_cert();
    let (crt_file, key_file) = (data.join("server.crt"), data.join("server.key"));
    std::fs::write(&crt_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let chown = Command::new("chown")
        .arg("postgres:postgres")
        .args([&crt_file, &key_file])
        .status()
        .unwrap();
    assert!(chown.success(), "chown of the server certificate failed");
    let conf = data.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
    std::fs::write(&conf, text).unwrap();
    let hba = data.join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("hostnossl all all all reject\nhostssl all all all trust\n{rules}"),
    )
    .unwrap();
    servers.restart_postgres();
}

/// FOI, ITM and IQube over HTTPS with a certificate from a CA given in
/// `EXTRA_CA_CERTS_FILE`: a file goes through; a failure reaches IQube.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_downstreams_trusted_through_extra_ca_certs_file() {
    let ca = TestCa::new("coordinator test CA");
    let dir = tempfile::tempdir().unwrap();
    let mut app = spawn_app(Opts {
        fakes_tls: Some(ca.server_config()),
        extra_ca_file: Some(ca.write(dir.path(), "ca.pem")),
        ..Opts::default()
    })
    .await;
    for url in [&app.args.foi_api_url, &app.args.itm_api_url] {
        assert!(url.as_deref().unwrap().starts_with("https://"), "{url:?}");
    }
    app.put("acme", "remit.csv", b"remittance").await;
    let body = app.run_ok().await;
    assert_eq!(body["summary"]["succeeded"], 1, "{body}");
    assert_eq!(app.fakes.foi_names(), ["remit.csv"]);
    assert_eq!(app.fakes.itm_calls().len(), 1);
    let rows = app.files().await;
    assert_eq!(rows[0].status, "success", "{rows:?}");
    app.eventually(30, "archived", || async {
        app.in_archive("acme", "remit.csv")
    })
    .await;

    app.fakes.set_itm(ItmBehavior::Failed);
    app.put("acme", "second.csv", b"second").await;
    app.run_ok().await;
    app.eventually(30, "IQube told over https", || async {
        app.fakes
            .iqube_calls()
            .iter()
            .any(|c| c.body["event"] == "file_failed" && c.body["file_name"] == "second.csv")
    })
    .await;
    let rows = app.files().await;
    assert_eq!(rows[1].status, "itm_failed", "{rows:?}");
    app.finish().await;
}

/// Without the CA, the fakes' certificate does not verify: the file is
/// `extraction_service_failed` because of the certificate, FOI never got a
/// request (no plaintext retry), and the IQube notification waits queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_certificate_fails_the_call_without_plaintext_retry() {
    let ca = TestCa::new("a CA nobody trusts");
    let mut app = spawn_app(Opts {
        fakes_tls: Some(ca.server_config()),
        foi_retries: 1,
        ..Opts::default()
    })
    .await;
    app.put("acme", "remit.csv", b"remittance").await;
    app.run_ok().await;
    let rows = app.files().await;
    assert_eq!(rows[0].status, "extraction_service_failed", "{rows:?}");
    let detail: serde_json::Value = sqlx::query_scalar(
        "SELECT detail FROM file_events WHERE status = 'extraction_service_failed'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    let reason = detail["reason"].as_str().unwrap_or_default().to_lowercase();
    assert!(reason.contains("certificate"), "{detail}");
    assert!(app.fakes.foi_calls().is_empty(), "FOI got a request");
    assert!(app.fakes.itm_calls().is_empty());

    let (attempts, last_error): (i32, Option<String>) =
        sqlx::query_as("SELECT attempts, last_error FROM notifications")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert!(attempts >= 1);
    let last_error = last_error.unwrap_or_default().to_lowercase();
    assert!(last_error.contains("certificate"), "{last_error}");
    assert_eq!(app.fakes.iqube_attempts(), 0);
    app.finish().await;
}

/// Postgres that accepts only TLS: the coordinator runs with
/// `sslmode=require`, and with `sslmode=verify-full` and the CA as
/// `sslrootcert`; no connection to its database is without TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls_with_require_and_verify_full() {
    let servers = PrivateServers::start(true);
    let ca = TestCa::new("postgres test CA");
    postgres_tls_only(&servers, &ca);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write(dir.path(), "ca.pem");
    let base = servers.env().database_url;
    for query in [
        "sslmode=require".to_string(),
        format!("sslmode=verify-full&sslrootcert={}", ca_file.display()),
    ] {
        let mut env = servers.env();
        env.database_url = format!("{base}?{query}");
        let mut app = spawn_app(Opts {
            env: Some(env),
            ..Opts::default()
        })
        .await;
        app.put("acme", "remit.csv", b"remittance").await;
        let body = app.run_ok().await;
        assert_eq!(body["summary"]["succeeded"], 1, "{query}: {body}");
        assert_eq!(app.files().await[0].status, "success");
        let (all, plain): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE NOT s.ssl) FROM pg_stat_activity a \
             JOIN pg_stat_ssl s USING (pid) WHERE a.datname = current_database()",
        )
        .fetch_one(&app.db)
        .await
        .unwrap();
        assert!(all >= 2, "the coordinator's pool is connected too");
        assert_eq!(plain, 0, "{query}: a connection without TLS");
        app.finish().await;
    }
}

/// The same Postgres refuses a plaintext connection, and `verify-full`
/// against another CA stops `coordinator migrate` with the certificate named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refuses_plaintext_and_unknown_ca() {
    let servers = PrivateServers::start(true);
    let ca = TestCa::new("postgres test CA");
    postgres_tls_only(&servers, &ca);
    let base = servers.env().database_url;

    let plain = PgPoolOptions::new()
        .max_connections(1)
        .connect(&format!("{base}?sslmode=disable"))
        .await
        .unwrap_err();
    assert!(plain.to_string().contains("no encryption"), "{plain}");

    let dir = tempfile::tempdir().unwrap();
    let other = TestCa::new("another CA").write(dir.path(), "other.pem");
    let out = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .arg("migrate")
        .env(
            "DATABASE_URL",
            format!("{base}?sslmode=verify-full&sslrootcert={}", other.display()),
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    keep_log(&stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("applying database migrations") && stderr.contains("certificate"),
        "{stderr}"
    );
}

/// A share whose smbd requires SMB3 encryption (a client without it is
/// refused): a run takes a file through and archives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smb_share_requiring_encryption() {
    let servers = PrivateServers::start_with(false, &[("IT_SMB_ENCRYPT", "required")]);
    let v = &servers.vars;
    let unencrypted = Command::new("smbclient")
        .args([
            "-s",
            &v["IT_SMB_CONF"],
            "-p",
            &v["IT_SMB_PORT"],
            "-m",
            "SMB2_10",
        ])
        .arg(format!("//127.0.0.1/{}", v["IT_SMB_SHARE"]))
        .arg("-U")
        .arg(format!("{}%{}", v["IT_SMB_USERNAME"], v["IT_SMB_PASSWORD"]))
        .args(["-c", "ls"])
        .output()
        .unwrap();
    assert!(
        !unencrypted.status.success(),
        "an SMB 2.1 client (no encryption) was let in"
    );

    let mut app = servers.app(Opts::default()).await;
    app.put("acme", "remit.csv", b"remittance").await;
    let body = app.run_ok().await;
    assert_eq!(body["summary"]["succeeded"], 1, "{body}");
    assert_eq!(app.files().await[0].status, "success");
    app.eventually(30, "archived", || async {
        app.in_archive("acme", "remit.csv")
    })
    .await;
    app.finish().await;
}

/// How each session of a private smbd is signed, as its `smbstatus` says:
/// `full` (smbd requires a signature on every message of it), `partial`
/// (signed messages seen, none required) or `none`.
fn signing_degrees(servers: &PrivateServers) -> Vec<String> {
    let out = Command::new("smbstatus")
        .args(["-s", &servers.vars["IT_SMB_CONF"], "-b", "--json"])
        .output()
        .expect("run smbstatus");
    assert!(out.status.success(), "{out:?}");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    status["sessions"]
        .as_object()
        .unwrap()
        .values()
        .map(|s| s["signing"]["degree"].as_str().unwrap().to_string())
        .collect()
}

/// On a share that does not require signing, the default (`if_required`)
/// leaves the session unsigned but for the tree connect, as smbclient does
/// (smbd: `partial`), and `required` makes smbd require a signature on every
/// message of the coordinator's session (`full`); the coordinator's session
/// is counted while it is still open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smb_signing_follows_the_setting() {
    let servers = PrivateServers::start(false);

    let mut app = servers.app(Opts::default()).await;
    app.put("acme", "a.csv", b"remittance a").await;
    let body = app.run_ok().await;
    assert_eq!(body["summary"]["succeeded"], 1, "{body}");
    // The remitter's session and the coordinator's, neither fully signed.
    let degrees = signing_degrees(&servers);
    assert!(
        degrees.len() >= 2 && degrees.iter().all(|d| d == "partial"),
        "{degrees:?}"
    );
    app.finish().await;

    let mut app = servers
        .app(Opts {
            flags: vec![("--smb-signing", "required".into())],
            ..Opts::default()
        })
        .await;
    app.put("acme", "b.csv", b"remittance b").await;
    let body = app.run_ok().await;
    assert_eq!(body["summary"]["succeeded"], 1, "{body}");
    let degrees = signing_degrees(&servers);
    assert!(degrees.iter().any(|d| d == "full"), "{degrees:?}");
    app.finish().await;
}

/// A share whose smbd requires signing (`server signing = mandatory`): with
/// the default setting the coordinator signs every message, as the
/// remitter's client does, and a run takes a file through and archives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smb_share_requiring_signing() {
    let servers = PrivateServers::start_with(false, &[("IT_SMB_SIGNING", "mandatory")]);
    let mut app = servers.app(Opts::default()).await;
    app.put("acme", "remit.csv", b"remittance").await;
    let body = app.run_ok().await;
    assert_eq!(body["summary"]["succeeded"], 1, "{body}");
    let degrees = signing_degrees(&servers);
    assert!(
        degrees.len() >= 2 && degrees.iter().all(|d| d == "full"),
        "{degrees:?}"
    );
    app.eventually(30, "archived", || async {
        app.in_archive("acme", "remit.csv")
    })
    .await;
    app.finish().await;
}
