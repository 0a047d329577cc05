//! A Postgres database of its own for each engine test, copied from a
//! template that is migrated once (as crates.io's test-db crate does): a
//! copy takes a fraction of the time running every migration would.

use crate::store::{MIGRATOR, PgStore};
use sha2::{Digest, Sha256};
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use tokio::sync::OnceCell;
use uuid::Uuid;

/// Held on the admin connection while the template is looked for or made,
/// so test processes starting together make it once.
const TEMPLATE_LOCK: i64 = 0x636f_6f72_7464;

/// The template of this process's tests, found or made by its first test.
static TEMPLATE: OnceCell<String> = OnceCell::const_new();

/// Why a test database could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TestDbError {
    /// The tests were started without a database to work in.
    #[error(
        "DATABASE_URL is not set: the engine tests need the admin URL of a Postgres \
         they may create databases in (scripts/test.sh sets it)"
    )]
    NoUrl,
    /// A statement failed.
    #[error("{step}: {source}")]
    Sql {
        /// What was being done.
        step: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// The template could not be migrated.
    #[error("migrating the template database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Names the step of a failed statement.
fn sql(step: &'static str) -> impl FnOnce(sqlx::Error) -> TestDbError {
    move |source| TestDbError::Sql { step, source }
}

/// One test's database, dropped (best effort) with it.
pub struct TestDb {
    admin: PgConnectOptions,
    name: String,
    store: PgStore,
}

impl TestDb {
    /// A new database, migrated, from `DATABASE_URL` (an admin URL); panics
    /// with the reason when there is none.
    pub async fn new() -> Self {
        match Self::create().await {
            Ok(db) => db,
            Err(e) => panic!("no database for the test: {e}"),
        }
    }

    async fn create() -> Result<Self, TestDbError> {
        let url = std::env::var("DATABASE_URL").map_err(|_| TestDbError::NoUrl)?;
        let admin: PgConnectOptions = url.parse().map_err(sql("reading DATABASE_URL"))?;
        let template = TEMPLATE.get_or_try_init(|| template(&admin)).await?;
        let name = format!("coordinator_test_{}", Uuid::new_v4().simple());
        let mut conn = PgConnection::connect_with(&admin)
            .await
            .map_err(sql("connecting to DATABASE_URL"))?;
        let created = sqlx::query(&format!(
            "CREATE DATABASE \"{name}\" TEMPLATE \"{template}\""
        ))
        .execute(&mut conn)
        .await
        .map_err(sql("creating the test database"));
        let _ = conn.close().await;
        created?;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect_with(admin.clone().database(&name))
            .await
            .map_err(sql("connecting to the test database"))?;
        Ok(Self {
            admin,
            name,
            store: PgStore::from_pool(pool),
        })
    }

    /// The store over this database.
    pub fn store(&self) -> &PgStore {
        &self.store
    }
}

impl Drop for TestDb {
    /// Drops the database on a thread of its own (a drop cannot await, and
    /// the test's runtime is ending); a failure only leaves it behind.
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut conn) = PgConnection::connect_with(&admin).await {
                    let _ =
                        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                            .execute(&mut conn)
                            .await;
                    let _ = conn.close().await;
                }
            });
        });
        let _ = dropped.join();
    }
}

/// The template's name: a hash of every migration (version and checksum),
/// so a changed or added migration gets a template of its own.
fn template_name() -> String {
    let mut h = Sha256::new();
    for m in MIGRATOR.iter() {
        h.update(m.version.to_le_bytes());
        h.update(&*m.checksum);
    }
    format!("coordinator_template_{}", &hex::encode(h.finalize())[..16])
}

/// Finds or makes the migrated template, under [`TEMPLATE_LOCK`].
async fn template(admin: &PgConnectOptions) -> Result<String, TestDbError> {
    let name = template_name();
    let mut conn = PgConnection::connect_with(admin)
        .await
        .map_err(sql("connecting to DATABASE_URL"))?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(TEMPLATE_LOCK)
        .execute(&mut conn)
        .await
        .map_err(sql("waiting for the template lock"))?;
    let made = make_template(&mut conn, admin, &name).await;
    // Closing the session frees the lock.
    let _ = conn.close().await;
    made.map(|()| name)
}

/// Makes the template unless it exists already. It is marked a template
/// only once migrated: a database of that name not marked was left
/// half-made by a test process that died, and is made again.
async fn make_template(
    conn: &mut PgConnection,
    admin: &PgConnectOptions,
    name: &str,
) -> Result<(), TestDbError> {
    let ready: Option<bool> =
        sqlx::query_scalar("SELECT datistemplate FROM pg_database WHERE datname = $1")
            .bind(name)
            .fetch_optional(&mut *conn)
            .await
            .map_err(sql("looking for the template database"))?;
    match ready {
        Some(true) => return Ok(()),
        Some(false) => {
            sqlx::query(&format!("DROP DATABASE \"{name}\" WITH (FORCE)"))
                .execute(&mut *conn)
                .await
                .map_err(sql("dropping a half-made template database"))?;
        }
        None => {}
    }
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut *conn)
        .await
        .map_err(sql("creating the template database"))?;
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(admin.clone().database(name))
        .await
        .map_err(sql("connecting to the template database"))?;
    let migrated = MIGRATOR.run(&pool).await;
    // No session may stay on a template while it is copied.
    pool.close().await;
    migrated?;
    sqlx::query(&format!("ALTER DATABASE \"{name}\" IS_TEMPLATE true"))
        .execute(&mut *conn)
        .await
        .map_err(sql("marking the template database"))?;
    Ok(())
}
