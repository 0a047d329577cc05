//! Wiring: builds the engine from a [`Config`] and runs the programs of
//! CONTRACT §2 (`serve`, `run`, `migrate`).

use crate::auth::Authenticator;
use crate::auth::oidc::{JWKS_TIMEOUT, OidcVerifier};
use crate::config::Config;
use crate::downstream::{FoiClient, IqubeClient, ItmClient, http_client};
use crate::engine::{Deps, Engine, Identity, RunError, RunSettings};
use crate::http::{AppState, router};
use crate::instance::Membership;
use crate::metrics::{Metrics, Timed};
use crate::process::kept::KeptOutcomes;
use crate::source::smb::SmbShare;
use crate::store::PgStore;
use anyhow::Context;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Time after which a background pass starts no new IQube delivery: a
/// hanging IQube costs each pass at most this plus one `IQUBE_TIMEOUT_SECS`
/// (requests already sent are awaited, never dropped), and shutdown starts
/// none.
const DELIVERY_BUDGET: std::time::Duration = std::time::Duration::from_secs(30);

/// Connects to Postgres and applies the migrations.
pub async fn migrated_store(url: &str) -> anyhow::Result<PgStore> {
    let store = PgStore::connect_lazy(url).context("setting up the database pool")?;
    store
        .migrate()
        .await
        .context("applying database migrations")?;
    Ok(store)
}

/// Builds the engine and its clients around `store`; connects nothing else
/// yet. Spool files left by killed processes are removed first.
pub fn build_engine(cfg: &Config, store: PgStore) -> anyhow::Result<Arc<Engine>> {
    crate::process::sweep_stale_spools(&cfg.spool_dir);
    let http = |timeout, what| {
        http_client(timeout, &cfg.extra_ca_certs)
            .with_context(|| format!("building the {what} client"))
    };
    let foi = FoiClient::new(
        http(cfg.foi_timeout, "FOI")?,
        cfg.foi_url.clone(),
        cfg.foi_retries,
    );
    let itm = ItmClient::new(http(cfg.itm_timeout, "ITM")?, cfg.itm_url.clone());
    let iqube = IqubeClient::new(http(cfg.iqube_timeout, "IQube")?, cfg.iqube_url.clone());
    // One registry per engine: tests run many coordinators in one process.
    let metrics = Arc::new(Metrics::new());
    let deps = Deps {
        source: Arc::new(SmbShare::new(cfg.smb.clone())),
        store: Arc::new(store),
        foi: Timed::new(Arc::new(foi), metrics.clone()),
        itm: Timed::new(Arc::new(itm), metrics.clone()),
        iqube: Timed::new(Arc::new(iqube), metrics.clone()),
        metrics,
        kept: Arc::new(KeptOutcomes::journaled(&cfg.spool_dir)),
    };
    let settings = RunSettings {
        source_dir: cfg.source_dir.clone(),
        archive_dir: cfg.archive_dir.clone(),
        spool_dir: cfg.spool_dir.clone(),
        ignore: cfg.ignore.clone(),
        stable_min_age: cfg.stable_min_age,
        stable_check_interval: cfg.stable_check_interval,
        max_concurrent_files: cfg.max_concurrent_files,
        read_failure_notify_after: cfg.read_failure_notify_after,
        duplicate_content: cfg.duplicate_content,
        duplicate_window_days: cfg.duplicate_window_days,
        run_detail_retention: cfg.run_detail_retention,
        delivery_budget: DELIVERY_BUDGET,
    };
    let identity = Identity {
        instance: cfg.instance_id.clone(),
        incarnation: uuid::Uuid::new_v4(),
    };
    Ok(Engine::new(deps, settings, identity))
}

/// A started HTTP server (used by `serve` and by the integration tests).
pub struct Server {
    /// The bound address.
    pub addr: std::net::SocketAddr,
    /// Cancel to stop gracefully: drain (no new work, `/readyz` 503), let
    /// the files held and background passes finish, then stop serving.
    pub shutdown: CancellationToken,
    /// Completes when the server and its background work have stopped.
    pub done: tokio::task::JoinHandle<()>,
    /// The engine behind it.
    pub engine: Arc<Engine>,
    /// This process among the instances.
    pub membership: Arc<Membership>,
}

/// Joins the instances under `INSTANCE_ID` as the engine's incarnation
/// (refused while a live process holds the id).
async fn join(cfg: &Config, store: &PgStore, engine: &Engine) -> anyhow::Result<Arc<Membership>> {
    for warning in cfg.warnings() {
        tracing::warn!("{warning}");
    }
    Ok(Membership::join(
        Arc::new(store.clone()),
        &cfg.instance_id,
        engine.incarnation(),
        cfg.instance_heartbeat,
        cfg.max_concurrent_files,
    )
    .await?)
}

/// Takes part in the runs of other instances while this one is idle: takes
/// their candidates, and adopts a run whose owner died or stopped. Looks
/// every [`WORK_POLL`](crate::engine::WORK_POLL), at once when this
/// instance stored work; stops with the engine.
fn spawn_taker(engine: &Arc<Engine>) {
    let e = engine.clone();
    engine.tracker().spawn(async move {
        loop {
            tokio::select! {
                biased;
                _ = e.stop().cancelled() => break,
                _ = e.work_added().notified() => {}
                _ = tokio::time::sleep(crate::engine::WORK_POLL) => {}
            }
            match e.store().active_run().await {
                Ok(Some(run)) if !run.owner_alive => {
                    e.adopt(run.run_id).await;
                }
                Ok(Some(run)) if run.planned && run.takeable => {
                    e.take_candidates(run.run_id).await;
                }
                Ok(_) => {}
                Err(err) => tracing::debug!(error = %err, "could not look for a run in progress"),
            }
        }
    });
}

/// The API for `cfg` and the engine behind it, with migrations applied;
/// nothing is bound or scheduled (the tests drive it with `oneshot`).
pub async fn build_router(
    cfg: &Config,
) -> anyhow::Result<(axum::Router, Arc<Engine>, Arc<Membership>)> {
    let store = migrated_store(cfg.database_url.expose())
        .await?
        .with_audit_key(cfg.audit_key.clone());
    let engine = build_engine(cfg, store.clone())?;
    let membership = join(cfg, &store, &engine).await?;
    let oidc = match &cfg.oidc {
        Some(o) => Some(OidcVerifier::new(
            o.clone(),
            http_client(JWKS_TIMEOUT, &cfg.extra_ca_certs).context("building the JWKS client")?,
        )),
        None => None,
    };
    let auth = Authenticator::new(
        cfg.api_token.clone(),
        cfg.env == crate::config::Env::Local && cfg.api_token.is_none(),
        Arc::new(store.clone()),
        oidc,
    );
    let app = router(AppState {
        engine: engine.clone(),
        auth: Arc::new(auth),
        audit: Arc::new(store.clone()),
        tokens: Arc::new(store.clone()),
        ops: Arc::new(store.clone()),
        instances: Arc::new(store),
        membership: membership.clone(),
    });
    Ok((app, engine, membership))
}

/// Migrates, binds `cfg.bind_addr` and serves until `shutdown` is cancelled;
/// then waits for in-flight runs and background passes.
pub async fn start(cfg: &Config) -> anyhow::Result<Server> {
    let (app, engine, membership) = build_router(cfg).await?;
    let listener = TcpListener::bind(cfg.bind_addr)
        .await
        .with_context(|| format!("binding {}", cfg.bind_addr))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    // Cancelled by the caller (SIGTERM) or by the heartbeat when this
    // process's id was taken: either way the instance drains and stops.
    let shutdown = CancellationToken::new();
    let beats_done = CancellationToken::new();
    let heartbeat = membership.spawn_heartbeat(
        engine.metrics().clone(),
        beats_done.clone(),
        shutdown.clone(),
    );
    if let Some(every) = cfg.housekeeping_interval {
        let (e, stop) = (engine.clone(), engine.stop().clone());
        engine.tracker().spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => { e.background_pass().await; }
                }
            }
        });
    }
    if let Some(every) = cfg.run_interval {
        spawn_schedule(&engine, every, engine.stop().clone());
    }
    spawn_taker(&engine);
    spawn_sealer(&engine);
    let (e, m, drain) = (engine.clone(), membership.clone(), shutdown.clone());
    let done = tokio::spawn(async move {
        let http_stop = CancellationToken::new();
        let stopped = http_stop.clone();
        let mut http = tokio::spawn(async move {
            // The peer's address reaches the handlers (the audit trail's `remote_addr`).
            let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await;
            if let Err(err) = served {
                tracing::error!(error = %err, "HTTP server failed");
            }
        });
        let http_ended = tokio::select! {
            _ = drain.cancelled() => false,
            _ = &mut http => true,
        };
        // Draining: `/readyz` answers 503 and no run starts, while the files
        // held and the background passes finish; then the server stops.
        m.start_draining();
        tracing::info!("draining: finishing the files held, taking no new work");
        e.stop().cancel();
        e.tracker().close();
        e.tracker().wait().await;
        http_stop.cancel();
        if !http_ended {
            let _ = http.await;
        }
        beats_done.cancel();
        let _ = heartbeat.await;
        m.leave().await;
    });
    tracing::info!(%addr, instance = membership.id(), "coordinator listening");
    Ok(Server {
        addr,
        shutdown,
        done,
        engine,
        membership,
    })
}

/// How often `serve` seals the audit chain: rows wait about this long
/// before a seal orders them (and longer behind a long transaction).
const SEAL_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Seals the audit chain every [`SEAL_EVERY`] until the engine stops (one
/// instance at a time seals; the others find the lock taken and only read
/// the head for their metric).
fn spawn_sealer(engine: &Arc<Engine>) {
    let (e, stop) = (engine.clone(), engine.stop().clone());
    engine.tracker().spawn(async move {
        let mut tick = tokio::time::interval(SEAL_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = tick.tick() => e.seal_audit_chain(false).await,
            }
        }
    });
}

/// Starts a run every `every` (RUN_INTERVAL_SECS) until `stop`; a run in
/// flight when `stop` comes finishes first (the tracker waits for it). A
/// tick that finds another run in progress skips quietly: that is the
/// schedule working as meant, not an error, and IQube is not told.
fn spawn_schedule(engine: &Arc<Engine>, every: std::time::Duration, stop: CancellationToken) {
    let e = engine.clone();
    engine.tracker().spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            // Biased: once stopped, a tick that fell due meanwhile starts nothing.
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = tick.tick() => match e.run("schedule").await {
                    Ok(report) => tracing::info!(run_id = %report.run_id, "scheduled run completed"),
                    Err(RunError::Busy { running }) => {
                        e.metrics().scheduled_run_skipped();
                        tracing::info!(running = ?running, "scheduled run skipped: another run is in progress");
                    }
                    // Logged, recorded and told to IQube by the engine.
                    Err(RunError::Failed { .. }) => {}
                    Err(RunError::HandedOver { run_id }) => tracing::info!(%run_id, "scheduled run handed over to another instance"),
                },
            }
        }
    });
}

/// `coordinator serve`: until SIGTERM or SIGINT.
pub async fn serve(cfg: Config) -> anyhow::Result<()> {
    let server = start(&cfg).await?;
    let stop = server.shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("SIGTERM: draining");
        stop.cancel();
    });
    server
        .done
        .await
        .context("waiting for the server to stop")?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// `coordinator run`: one run, summary on stdout, background pass awaited
/// (a dry run has none). Returns the process exit code.
pub async fn run_once(cfg: Config, dry_run: bool) -> anyhow::Result<i32> {
    let store = PgStore::connect_lazy(cfg.database_url.expose())
        .context("setting up the database pool")?
        .with_audit_key(cfg.audit_key.clone());
    let engine = build_engine(&cfg, store.clone())?;
    // The share is connected while the migrations run, as `serve` keeps its
    // connection from one run to the next; a failure here is the run's to report.
    let (migrated, connected) = tokio::join!(store.migrate(), engine.source().connect());
    migrated.context("applying database migrations")?;
    if let Err(e) = connected {
        tracing::warn!(error = %e, "the share could not be connected at start-up");
    }
    // The process is an instance while it runs: its claims are live while
    // it beats, and taken over within three beats if it is killed.
    let membership = join(&cfg, &store, &engine).await?;
    let beats_done = CancellationToken::new();
    let heartbeat = membership.spawn_heartbeat(
        engine.metrics().clone(),
        beats_done.clone(),
        engine.stop().clone(),
    );
    // SIGTERM/SIGINT: files already claimed finish, nothing more is claimed
    // (the summary says the run was cut short), and no claim is left dangling.
    let stop = engine.stop().clone();
    let signals = tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("stopping: finishing the files in flight, claiming no more");
        stop.cancel();
    });
    let result = if dry_run {
        engine.dry_run("cli").await
    } else {
        engine.run("cli").await
    };
    signals.abort();
    engine.tracker().close();
    engine.tracker().wait().await;
    beats_done.cancel();
    let _ = heartbeat.await;
    membership.leave().await;
    let (code, body) = match result {
        Ok(report) => (0, serde_json::to_value(&report)?),
        Err(e @ RunError::Busy { .. }) => (3, e.body()),
        Err(e @ RunError::HandedOver { .. }) => (4, e.body()),
        Err(e @ RunError::Failed { .. }) => (1, e.body()),
    };
    println!("{}", serde_json::to_string_pretty(&body)?);
    Ok(code)
}

/// `coordinator migrate`.
pub async fn migrate(url: &str) -> anyhow::Result<()> {
    migrated_store(url).await?;
    tracing::info!("migrations applied");
    Ok(())
}
