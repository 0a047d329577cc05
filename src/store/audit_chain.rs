//! The audit chain (CONTRACT §11 "Tamper evidence").
//!
//! Two layers, so that the chain never serialises the per-file work:
//!
//! - **Row MACs, at insert.** Every `file_events` and `audit_events` row
//!   carries `mac` = a random 16-byte nonce and HMAC-SHA256(`AUDIT_KEY`,
//!   nonce and a canonical encoding of what the writer knows): the table,
//!   the status and `detail` (re-serialised canonically, so the jsonb read
//!   back gives the same bytes), and the file the event is about: its id,
//!   or, where the statement creates the file row itself (a first claim),
//!   its identity `(remitter, file_name, md5)`. The MAC is computed in Rust
//!   and written by the same statement: no extra round trip, no lock. It
//!   proves that a key holder wrote the row, so an edit or a row inserted
//!   behind the coordinator's back is found at once; the nonce makes every
//!   MAC unique, so a copied row is found too.
//! - **Seals, in the background.** A sealer takes the horizon `h`, the
//!   oldest transaction still running: every transaction below it has
//!   finished, and no new one can start below it. It packs the rows written
//!   by the transactions since the last seal of that table and below `h`,
//!   in id order, as (id, digest of the whole row), into an `audit_seals`
//!   row whose link is HMAC(`AUDIT_KEY`, previous link || the seal). The
//!   seals are the chain; the newest link is its head, published as a
//!   metric and a log line, so that a copy outside the database shows a cut
//!   tail. Deleting, reordering, or changing the id or time of a sealed row
//!   breaks its seal's digests.
//!
//! `verify` checks all of it and names the first row at fault.

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Postgres};
use std::collections::HashMap;

use super::StoreError;
use super::audit::{AuditEntry, Outcome};
use super::postgres::{AUDIT_SEAL_LOCK_KEY, Step};

type HmacSha256 = Hmac<Sha256>;

/// Bytes of the random nonce at the start of every `mac`.
pub const NONCE_LEN: usize = 16;
/// Bytes of an HMAC-SHA256 tag (row MACs and seal links).
pub const TAG_LEN: usize = 32;
/// Bytes of a `mac` column: nonce, then tag.
pub const MAC_LEN: usize = NONCE_LEN + TAG_LEN;
/// Bytes per sealed row in `audit_seals.digests`: id, then digest.
const ENTRY_LEN: usize = 16;
/// The key used when `ENV=local` and no `AUDIT_KEY` is set: public, so a
/// chain made with it proves nothing (start-up and `verify` say so).
const DEVELOPMENT_KEY: &[u8] = b"coordinator development audit key: proves nothing";
/// The previous link of the first seal.
const GENESIS: [u8; TAG_LEN] = [0; TAG_LEN];

/// `AUDIT_KEY`, ready to MAC: never printed, never sent to the database.
#[derive(Clone)]
pub struct AuditKey {
    mac: HmacSha256,
    development: bool,
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.development {
            "AuditKey(<development key>)"
        } else {
            "AuditKey(<redacted>)"
        })
    }
}

/// Why a configured `AUDIT_KEY` was refused.
#[derive(Debug, thiserror::Error)]
#[error("must be at least {min} characters (32 random bytes, hex or base64, are recommended)", min = AuditKey::MIN_LEN)]
pub struct AuditKeyTooShort;

impl AuditKey {
    /// The shortest key accepted.
    pub const MIN_LEN: usize = 16;

    /// A configured key.
    pub fn new(secret: &[u8]) -> Result<Self, AuditKeyTooShort> {
        if secret.len() < Self::MIN_LEN {
            return Err(AuditKeyTooShort);
        }
        Ok(Self::from_bytes(secret, false))
    }

    /// The fixed development key (`ENV=local` without `AUDIT_KEY`, and
    /// stores built without a key, in tests).
    pub fn development() -> Self {
        Self::from_bytes(DEVELOPMENT_KEY, true)
    }

    fn from_bytes(secret: &[u8], development: bool) -> Self {
        // HMAC takes a key of any length; this cannot fail.
        let mac = <HmacSha256 as Mac>::new_from_slice(secret)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        Self { mac, development }
    }

    /// True for the public development key.
    pub fn is_development(&self) -> bool {
        self.development
    }

    fn tag(&self, message: &[u8]) -> [u8; TAG_LEN] {
        let mut m = self.mac.clone();
        m.update(message);
        m.finalize().into_bytes().into()
    }
}

/// The file an event is about, as its writer knows it.
#[derive(Debug, Clone, Copy)]
pub enum FileBinding<'a> {
    /// `files.id`.
    Id(i64),
    /// The identity of a row the same statement inserts (`PgStore::claim`):
    /// unique, and never changed once written.
    Version {
        /// Remitter folder.
        remitter: &'a str,
        /// File name.
        file_name: &'a str,
        /// Hex MD5.
        md5: &'a str,
    },
}

/// Length-prefixed fields: no two different field lists encode alike.
#[derive(Default)]
struct Enc(Vec<u8>);

impl Enc {
    fn with(tag: &str) -> Self {
        let mut e = Self(Vec::with_capacity(256));
        e.bytes(tag.as_bytes());
        e
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0
            .extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_be_bytes());
        self.0.extend_from_slice(b);
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }
    fn opt(&mut self, s: Option<&[u8]>) -> &mut Self {
        match s {
            None => self.0.push(0),
            Some(b) => {
                self.0.push(1);
                self.bytes(b);
            }
        }
        self
    }
    fn i64(&mut self, v: i64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn json(&mut self, v: &Value) -> &mut Self {
        let mut text = Vec::with_capacity(64);
        canonical_json(v, &mut text);
        self.bytes(&text)
    }
}

/// `v` as canonical JSON: object keys sorted by their bytes, no spaces,
/// strings escaped as serde_json escapes them, and numbers by value: an
/// integral number within i64/u64 range is written as an integer whatever
/// its type, so `1e18` written and `1000000000000000000` read back from
/// jsonb (which keeps numbers as decimals) encode alike, as do `-0.0` and
/// `0`; any other number in its shortest round-trip form.
pub fn canonical_json(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.extend_from_slice(i.to_string().as_bytes());
            } else if let Some(u) = n.as_u64() {
                out.extend_from_slice(u.to_string().as_bytes());
            } else if let Some(f) = n.as_f64() {
                // 2^63 and 2^64, exactly representable.
                const LOW: f64 = -9_223_372_036_854_775_808.0;
                const HIGH: f64 = 18_446_744_073_709_551_616.0;
                if f.fract() == 0.0 && (LOW..HIGH).contains(&f) {
                    out.extend_from_slice((f as i128).to_string().as_bytes());
                } else {
                    out.extend_from_slice(
                        serde_json::Number::from_f64(f)
                            .map_or_else(|| "null".to_string(), |n| n.to_string())
                            .as_bytes(),
                    );
                }
            }
        }
        Value::String(s) => string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_json(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (k, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                string(k, out);
                out.push(b':');
                canonical_json(item, out);
            }
            out.push(b'}');
        }
    }
}

fn string(s: &str, out: &mut Vec<u8>) {
    // Writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn nonce() -> [u8; NONCE_LEN] {
    *uuid::Uuid::new_v4().as_bytes()
}

/// The message of a `file_events` MAC up to the file binding.
fn file_event_prefix(nonce: &[u8], status: &str, detail: &Value) -> Enc {
    let mut e = Enc::with("coordinator/file_events/mac/v1");
    e.bytes(nonce).str(status).json(detail);
    e
}

fn bind(e: &mut Enc, binding: FileBinding<'_>) {
    match binding {
        FileBinding::Id(id) => {
            e.0.push(b'I');
            e.i64(id);
        }
        FileBinding::Version {
            remitter,
            file_name,
            md5,
        } => {
            e.0.push(b'V');
            e.str(remitter).str(file_name).str(md5);
        }
    }
}

/// The `mac` of a new `file_events` row: nonce, then tag.
pub fn file_event_mac(
    key: &AuditKey,
    status: &str,
    detail: &Value,
    binding: FileBinding<'_>,
) -> Vec<u8> {
    let n = nonce();
    let mut e = file_event_prefix(&n, status, detail);
    bind(&mut e, binding);
    let mut mac = n.to_vec();
    mac.extend_from_slice(&key.tag(&e.0));
    mac
}

/// True when `mac` is a valid MAC of this event under either binding (the
/// writer used one; `version` is the identity of `file_id`'s row, if any).
fn file_event_mac_ok(
    key: &AuditKey,
    mac: &[u8],
    status: &str,
    detail: &Value,
    file_id: i64,
    version: Option<FileBinding<'_>>,
) -> bool {
    if mac.len() != MAC_LEN {
        return false;
    }
    let (n, tag) = mac.split_at(NONCE_LEN);
    let prefix = file_event_prefix(n, status, detail);
    let mut base = key.mac.clone();
    base.update(&prefix.0);
    let check = |binding: FileBinding<'_>| {
        let mut e = Enc::default();
        bind(&mut e, binding);
        let mut m = base.clone();
        m.update(&e.0);
        m.verify_slice(tag).is_ok()
    };
    check(FileBinding::Id(file_id)) || version.is_some_and(check)
}

/// What an `audit_events` row's MAC covers: every column but `id` and `at`
/// (the database's), as its writer gives them.
fn audit_event_message(nonce: &[u8], row: &AuditEntry) -> Enc {
    let mut e = Enc::with("coordinator/audit_events/mac/v1");
    e.bytes(nonce)
        .str(&row.actor)
        .opt(o(&row.role))
        .str(&row.action)
        .opt(o(&row.target))
        .str(row.outcome.as_str())
        .opt(o(&row.reason))
        .opt(o(&row.remote_addr))
        .opt(o(&row.request_id));
    e
}

/// The `mac` of a new `audit_events` row: nonce, then tag.
pub fn audit_event_mac(key: &AuditKey, row: &AuditEntry) -> Vec<u8> {
    let n = nonce();
    let mut mac = n.to_vec();
    mac.extend_from_slice(&key.tag(&audit_event_message(&n, row).0));
    mac
}

fn audit_event_mac_ok(key: &AuditKey, mac: &[u8], row: &AuditEntry) -> bool {
    if mac.len() != MAC_LEN {
        return false;
    }
    let (n, tag) = mac.split_at(NONCE_LEN);
    let mut m = key.mac.clone();
    m.update(&audit_event_message(n, row).0);
    m.verify_slice(tag).is_ok()
}

/// Writes one `audit_events` row with its MAC, in one statement; its id.
/// `executor` may be the pool or a transaction (`&mut *tx`).
pub async fn insert_audit_event<'e, E>(
    executor: E,
    key: &AuditKey,
    row: &AuditEntry,
) -> Result<i64, StoreError>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    sqlx::query_scalar(
        "INSERT INTO audit_events (actor, role, action, target, outcome, reason, remote_addr, request_id, mac) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
    )
    .bind(&row.actor)
    .bind(&row.role)
    .bind(&row.action)
    .bind(&row.target)
    .bind(row.outcome.as_str())
    .bind(&row.reason)
    .bind(&row.remote_addr)
    .bind(&row.request_id)
    .bind(audit_event_mac(key, row))
    .fetch_one(executor)
    .await
    .step("recording an audit event")
}

/// A table in the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// `file_events`.
    FileEvents,
    /// `audit_events`.
    AuditEvents,
}

impl Table {
    /// Both, in the order they are sealed and verified.
    pub const ALL: [Table; 2] = [Table::FileEvents, Table::AuditEvents];

    /// The table's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Table::FileEvents => "file_events",
            Table::AuditEvents => "audit_events",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// A `file_events` row as stored, with the identity of its file.
#[derive(Debug, Clone, sqlx::FromRow)]
struct FileEventRecord {
    id: i64,
    file_id: i64,
    status: String,
    detail: Value,
    created_at: DateTime<Utc>,
    mac: Option<Vec<u8>>,
    xid: i64,
    remitter: Option<String>,
    file_name: Option<String>,
    md5: Option<String>,
}

/// An `audit_events` row as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
struct AuditEventRecord {
    id: i64,
    at: DateTime<Utc>,
    actor: String,
    role: Option<String>,
    action: String,
    target: Option<String>,
    outcome: String,
    reason: Option<String>,
    remote_addr: Option<String>,
    request_id: Option<String>,
    mac: Option<Vec<u8>>,
    xid: i64,
}

const FILE_EVENT_COLUMNS: &str = "e.id, e.file_id, e.status, e.detail, e.created_at, e.mac, \
     (e.xid::text)::bigint AS xid, f.remitter, f.file_name, f.md5";
const AUDIT_EVENT_COLUMNS: &str = "e.id, e.at, e.actor, e.role, e.action, e.target, e.outcome, \
     e.reason, e.remote_addr, e.request_id, e.mac, (e.xid::text)::bigint AS xid";

/// An optional text field as bytes.
fn o(s: &Option<String>) -> Option<&[u8]> {
    s.as_deref().map(str::as_bytes)
}

/// The first 8 bytes of SHA-256 over an encoding.
fn digest8(e: &Enc) -> [u8; 8] {
    let d = Sha256::digest(&e.0);
    let mut out = [0; 8];
    out.copy_from_slice(&d[..8]);
    out
}

fn micros(t: &DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// What a seal keeps of a row, and what verify compares.
trait Record {
    fn id(&self) -> i64;
    fn xid(&self) -> i64;
    fn mac(&self) -> Option<&[u8]>;
    /// Digest of the whole row, id, time and transaction included.
    fn digest(&self) -> [u8; 8];
    /// True when `mac` (present) is this row's MAC under `key`.
    fn mac_ok(&self, key: &AuditKey, mac: &[u8]) -> bool;
}

impl Record for FileEventRecord {
    fn id(&self) -> i64 {
        self.id
    }
    fn xid(&self) -> i64 {
        self.xid
    }
    fn mac(&self) -> Option<&[u8]> {
        self.mac.as_deref()
    }
    fn digest(&self) -> [u8; 8] {
        let mut e = Enc::with("coordinator/file_events/row/v1");
        e.i64(self.id)
            .i64(self.xid)
            .i64(self.file_id)
            .i64(micros(&self.created_at))
            .str(&self.status)
            .json(&self.detail)
            .opt(self.mac.as_deref());
        digest8(&e)
    }
    fn mac_ok(&self, key: &AuditKey, mac: &[u8]) -> bool {
        let version = match (&self.remitter, &self.file_name, &self.md5) {
            (Some(remitter), Some(file_name), Some(md5)) => Some(FileBinding::Version {
                remitter,
                file_name,
                md5,
            }),
            _ => None,
        };
        file_event_mac_ok(key, mac, &self.status, &self.detail, self.file_id, version)
    }
}

impl AuditEventRecord {
    /// The row as its writer gave it; `None` for an outcome no writer writes.
    fn entry(&self) -> Option<AuditEntry> {
        Some(AuditEntry {
            actor: self.actor.clone(),
            role: self.role.clone(),
            action: self.action.clone(),
            target: self.target.clone(),
            outcome: Outcome::parse(&self.outcome)?,
            reason: self.reason.clone(),
            remote_addr: self.remote_addr.clone(),
            request_id: self.request_id.clone(),
        })
    }
}

impl Record for AuditEventRecord {
    fn id(&self) -> i64 {
        self.id
    }
    fn xid(&self) -> i64 {
        self.xid
    }
    fn mac(&self) -> Option<&[u8]> {
        self.mac.as_deref()
    }
    fn digest(&self) -> [u8; 8] {
        let mut e = Enc::with("coordinator/audit_events/row/v1");
        e.i64(self.id)
            .i64(self.xid)
            .i64(micros(&self.at))
            .str(&self.actor)
            .opt(o(&self.role))
            .str(&self.action)
            .opt(o(&self.target))
            .str(&self.outcome)
            .opt(o(&self.reason))
            .opt(o(&self.remote_addr))
            .opt(o(&self.request_id))
            .opt(self.mac.as_deref());
        digest8(&e)
    }
    fn mac_ok(&self, key: &AuditKey, mac: &[u8]) -> bool {
        self.entry()
            .is_some_and(|row| audit_event_mac_ok(key, mac, &row))
    }
}

/// The newest seal: the published head of the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    /// `audit_seals.id`.
    pub seal_id: i64,
    /// Its link.
    pub link: Vec<u8>,
}

impl ChainHead {
    /// The link in hex, as published.
    pub fn link_hex(&self) -> String {
        hex::encode(&self.link)
    }
}

/// One xid range a sealing pass covers for a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealRange {
    /// The first seal of the table: it covers the rows from before the
    /// chain (NULL `mac`) and is written even when empty.
    pub legacy: bool,
    /// First transaction id covered.
    pub xid_from: i64,
    /// First transaction id not covered.
    pub xid_to: i64,
}

/// The ranges a sealing pass covers for a table whose last seal ends at
/// `sealed_to` (None: never sealed), given the chain's origin (the
/// migration's transaction) and the horizon `h` (every transaction below it
/// has finished). Gapless: each range starts where the last ended.
pub fn plan_ranges(sealed_to: Option<i64>, origin: i64, h: i64) -> Vec<SealRange> {
    let mut out = Vec::new();
    let from = match sealed_to {
        Some(to) => to,
        None => {
            // The legacy rows all carry the migration's xid; until that
            // transaction is below the horizon nothing can be sealed.
            if h <= origin {
                return out;
            }
            out.push(SealRange {
                legacy: true,
                xid_from: 0,
                xid_to: origin + 1,
            });
            origin + 1
        }
    };
    if h > from {
        out.push(SealRange {
            legacy: false,
            xid_from: from,
            xid_to: h,
        });
    }
    out
}

/// The link of a seal.
#[allow(clippy::too_many_arguments)]
fn seal_link(
    key: &AuditKey,
    prev_link: &[u8],
    table: &str,
    legacy: bool,
    xid_from: i64,
    xid_to: i64,
    row_count: i64,
    digests: &[u8],
) -> [u8; TAG_LEN] {
    let mut e = Enc::with("coordinator/audit_seals/link/v1");
    e.bytes(prev_link)
        .str(table)
        .i64(i64::from(legacy))
        .i64(xid_from)
        .i64(xid_to)
        .i64(row_count)
        .bytes(digests);
    key.tag(&e.0)
}

/// The newest seal, if any.
pub async fn chain_head<'e, E>(executor: E) -> Result<Option<ChainHead>, StoreError>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    let head: Option<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT id, link FROM audit_seals ORDER BY id DESC LIMIT 1")
            .fetch_optional(executor)
            .await
            .step("reading the audit chain's head")?;
    Ok(head.map(|(seal_id, link)| ChainHead { seal_id, link }))
}

/// What a sealing pass did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The head after the pass (None: nothing sealed yet, ever).
    pub head: Option<ChainHead>,
    /// Seals this pass wrote (0 when another sealer held the lock, or
    /// nothing new had finished).
    pub seals_written: usize,
    /// Rows they cover.
    pub rows_sealed: i64,
    /// The first row this pass sealed whose MAC is missing or wrong
    /// (written behind the coordinator's back, or by another key): sealed
    /// all the same, as it is, for `verify` to name; said at once in the log.
    pub suspect: Option<(Table, i64)>,
}

/// Seals every row written by a finished transaction since the last seal
/// of its table: one pass, under an advisory lock (another instance's pass
/// in progress: nothing done). It reads and inserts only: no lock is taken
/// on the tables the per-file work writes. A transaction that stays open
/// holds the horizon back, and the rows of later ones wait for it.
pub async fn seal(pool: &PgPool, key: &AuditKey) -> Result<Sealed, StoreError> {
    let mut tx = pool.begin().await.step("starting the audit seal")?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(AUDIT_SEAL_LOCK_KEY)
        .fetch_one(&mut *tx)
        .await
        .step("taking the audit seal lock")?;
    if !locked {
        drop(tx);
        return Ok(Sealed {
            head: chain_head(pool).await?,
            seals_written: 0,
            rows_sealed: 0,
            suspect: None,
        });
    }
    // Read committed: each statement below sees every seal committed
    // before the lock was taken, so two passes never start from one head.
    let mut head = chain_head(&mut *tx).await?;
    // One index probe per table (a DISTINCT ON would read every seal).
    let (files_to, audit_to): (Option<i64>, Option<i64>) = sqlx::query_as(
        "SELECT (SELECT xid_to FROM audit_seals WHERE table_name = 'file_events' ORDER BY id DESC LIMIT 1), \
                (SELECT xid_to FROM audit_seals WHERE table_name = 'audit_events' ORDER BY id DESC LIMIT 1)",
    )
    .fetch_one(&mut *tx)
    .await
    .step("reading the last seal of each table")?;
    let (origin, h): (i64, i64) = sqlx::query_as(
        "SELECT coalesce((SELECT min((xid::text)::bigint) FROM audit_chain_origin), 0), \
                (pg_snapshot_xmin(pg_current_snapshot())::text)::bigint",
    )
    .fetch_one(&mut *tx)
    .await
    .step("reading the audit horizon")?;
    let mut written = 0;
    let mut rows_sealed = 0;
    let mut suspect = None;
    for table in Table::ALL {
        let last = match table {
            Table::FileEvents => files_to,
            Table::AuditEvents => audit_to,
        };
        for range in plan_ranges(last, origin, h) {
            let (digests, bad) = match table {
                Table::FileEvents => {
                    pack::<FileEventRecord>(&mut tx, key, table, FILE_EVENT_COLUMNS, range).await?
                }
                Table::AuditEvents => {
                    pack::<AuditEventRecord>(&mut tx, key, table, AUDIT_EVENT_COLUMNS, range)
                        .await?
                }
            };
            if suspect.is_none() {
                suspect = bad.map(|id| (table, id));
            }
            if digests.is_empty() && !range.legacy {
                continue;
            }
            let row_count = (digests.len() / ENTRY_LEN) as i64;
            let id_at = |i: usize| {
                let mut b = [0; 8];
                b.copy_from_slice(&digests[i * ENTRY_LEN..i * ENTRY_LEN + 8]);
                i64::from_be_bytes(b)
            };
            let (first_id, last_id) = if row_count == 0 {
                (None, None)
            } else {
                (Some(id_at(0)), Some(id_at(row_count as usize - 1)))
            };
            let prev = head.as_ref().map_or(GENESIS.to_vec(), |h| h.link.clone());
            let link = seal_link(
                key,
                &prev,
                table.as_str(),
                range.legacy,
                range.xid_from,
                range.xid_to,
                row_count,
                &digests,
            );
            let seal_id: i64 = sqlx::query_scalar(
                "INSERT INTO audit_seals (table_name, legacy, xid_from, xid_to, first_id, last_id, \
                   row_count, digests, prev_link, link) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
            )
            .bind(table.as_str())
            .bind(range.legacy)
            .bind(range.xid_from)
            .bind(range.xid_to)
            .bind(first_id)
            .bind(last_id)
            .bind(row_count)
            .bind(&digests)
            .bind(&prev)
            .bind(link.as_slice())
            .fetch_one(&mut *tx)
            .await
            .step("writing an audit seal")?;
            head = Some(ChainHead {
                seal_id,
                link: link.to_vec(),
            });
            written += 1;
            rows_sealed += row_count;
        }
    }
    tx.commit().await.step("committing the audit seal")?;
    Ok(Sealed {
        head,
        seals_written: written,
        rows_sealed,
        suspect,
    })
}

/// The (id, digest) entries of a table's rows in an xid range, in id
/// order, and the first of them whose MAC is missing (outside the legacy
/// range) or wrong.
async fn pack<R>(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    key: &AuditKey,
    table: Table,
    columns: &str,
    range: SealRange,
) -> Result<(Vec<u8>, Option<i64>), StoreError>
where
    R: Record + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    let join = match table {
        Table::FileEvents => " LEFT JOIN files f ON f.id = e.file_id",
        Table::AuditEvents => "",
    };
    let sql = format!(
        "SELECT {columns} FROM {} e{join} \
         WHERE e.xid >= ($1::bigint)::text::xid8 AND e.xid < ($2::bigint)::text::xid8 ORDER BY e.id",
        table.as_str()
    );
    let mut rows = sqlx::query_as::<_, R>(&sql)
        .bind(range.xid_from)
        .bind(range.xid_to)
        .fetch(&mut **tx);
    let mut out = Vec::new();
    let mut bad = None;
    while let Some(r) = rows.try_next().await.step("reading rows to seal")? {
        out.extend_from_slice(&r.id().to_be_bytes());
        out.extend_from_slice(&r.digest());
        let ok = match r.mac() {
            Some(mac) => r.mac_ok(key, mac),
            None => range.legacy,
        };
        if !ok && bad.is_none() {
            bad = Some(r.id());
        }
    }
    Ok((out, bad))
}

/// What `verify` found on an intact chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Rows checked, both tables.
    pub rows: u64,
    /// Seals checked.
    pub seals: u64,
    /// Rows newer than the last seal of their table: their MAC was checked,
    /// their place in the order cannot be yet.
    pub unsealed: u64,
    /// The newest seal: compare it with a published head to see that the
    /// tail was not cut.
    pub head: Option<ChainHead>,
}

/// Why `verify` did not answer `Verified`.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The chain is broken: the first row (or seal) at fault, and how.
    #[error("{0}")]
    Broken(String),
    /// The database could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One table's sealed row, as its seal lists it.
#[derive(Debug, Clone, Copy)]
struct Expected {
    id: i64,
    digest: [u8; 8],
    /// Index into the seals read.
    seal: usize,
}

/// A seal as read back.
#[derive(Debug, sqlx::FromRow)]
struct SealRow {
    id: i64,
    table_name: String,
    legacy: bool,
    xid_from: i64,
    xid_to: i64,
    first_id: Option<i64>,
    last_id: Option<i64>,
    row_count: i64,
    digests: Vec<u8>,
    prev_link: Vec<u8>,
    link: Vec<u8>,
}

/// The seals, checked: their expected rows by table, how far each table is
/// sealed, and the first problem with a seal (reported after the rows, so
/// that a wrong key names the first row).
struct Seals {
    rows: Vec<SealRow>,
    expected: HashMap<Table, Vec<Expected>>,
    sealed_to: HashMap<Table, i64>,
    problem: Option<String>,
}

fn check_seals(key: &AuditKey, rows: Vec<SealRow>) -> Seals {
    let mut problem: Option<String> = None;
    let mut note = |p: String| {
        if problem.is_none() {
            problem = Some(p);
        }
    };
    let mut expected: HashMap<Table, Vec<Expected>> = HashMap::new();
    let mut sealed_to: HashMap<Table, i64> = HashMap::new();
    let mut last_of: HashMap<Table, i64> = HashMap::new();
    let mut prev: Vec<u8> = GENESIS.to_vec();
    let mut prev_id: Option<i64> = None;
    for (i, s) in rows.iter().enumerate() {
        let at = format!("audit_seals seal {}", s.id);
        if s.prev_link != prev {
            note(match prev_id {
                Some(p) => format!(
                    "{at}: does not follow seal {p} (its previous link differs): a seal was deleted, inserted or reordered"
                ),
                None => format!(
                    "{at}: is not the first seal of the chain (its previous link is not the genesis): seals before it were deleted"
                ),
            });
        }
        let link = seal_link(
            key,
            &s.prev_link,
            &s.table_name,
            s.legacy,
            s.xid_from,
            s.xid_to,
            s.row_count,
            &s.digests,
        );
        if s.link != link {
            note(format!(
                "{at}: its link does not verify: the seal was changed, or written with another AUDIT_KEY"
            ));
        }
        prev = s.link.clone();
        prev_id = Some(s.id);
        let Some(table) = Table::parse(&s.table_name) else {
            note(format!("{at}: names an unknown table {:?}", s.table_name));
            continue;
        };
        match sealed_to.get(&table) {
            None if !(s.legacy && s.xid_from == 0) => note(format!(
                "{at}: the first seal of {} is not its legacy seal: seals before it were deleted",
                table.as_str()
            )),
            Some(&to) if s.legacy || s.xid_from != to => note(format!(
                "{at}: does not continue seal {} of {} (transactions {} to {} are not sealed): a seal was deleted",
                last_of.get(&table).copied().unwrap_or_default(),
                table.as_str(),
                to,
                s.xid_from
            )),
            _ => {}
        }
        sealed_to.insert(table, s.xid_to);
        last_of.insert(table, s.id);
        if s.digests.len() % ENTRY_LEN != 0 || (s.digests.len() / ENTRY_LEN) as i64 != s.row_count {
            note(format!("{at}: its row list is malformed"));
            continue;
        }
        let list = expected.entry(table).or_default();
        let mut last: Option<i64> = None;
        for chunk in s.digests.chunks_exact(ENTRY_LEN) {
            let mut idb = [0; 8];
            idb.copy_from_slice(&chunk[..8]);
            let mut digest = [0; 8];
            digest.copy_from_slice(&chunk[8..]);
            let id = i64::from_be_bytes(idb);
            if last.is_some_and(|l| l >= id) {
                note(format!("{at}: its rows are not in id order"));
            }
            last = Some(id);
            list.push(Expected {
                id,
                digest,
                seal: i,
            });
        }
        let first = s.digests.get(..8).map(|b| {
            let mut a = [0; 8];
            a.copy_from_slice(b);
            i64::from_be_bytes(a)
        });
        if first != s.first_id || last != s.last_id {
            note(format!(
                "{at}: its first and last ids do not match its rows"
            ));
        }
    }
    for (table, list) in expected.iter_mut() {
        list.sort_by_key(|e| e.id);
        if let Some(w) = list.windows(2).find(|w| w[0].id == w[1].id) {
            note(format!(
                "audit_seals seal {}: {} row {} is sealed twice (also by seal {})",
                rows[w[1].seal].id,
                table.as_str(),
                w[1].id,
                rows[w[0].seal].id
            ));
        }
    }
    Seals {
        rows,
        expected,
        sealed_to,
        problem,
    }
}

/// Walks the chain: every seal's link and order, every row's MAC, each
/// seal's rows against the rows present. Reads only, in one repeatable-read
/// snapshot (which holds back no sealer: it takes no transaction id).
pub async fn verify(pool: &PgPool, key: &AuditKey) -> Result<Verified, VerifyError> {
    let mut tx = pool.begin().await.step("starting the verification")?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await
        .step("starting the verification")?;
    let seal_rows: Vec<SealRow> = sqlx::query_as(
        "SELECT id, table_name, legacy, xid_from, xid_to, first_id, last_id, row_count, digests, \
           prev_link, link FROM audit_seals ORDER BY id",
    )
    .fetch_all(&mut *tx)
    .await
    .step("reading the audit seals")?;
    let mut seals = check_seals(key, seal_rows);
    let mut rows = 0;
    let mut unsealed = 0;
    for table in Table::ALL {
        let expected = seals.expected.remove(&table).unwrap_or_default();
        let sealed_to = seals.sealed_to.get(&table).copied().unwrap_or(0);
        let (join, columns) = match table {
            Table::FileEvents => (" LEFT JOIN files f ON f.id = e.file_id", FILE_EVENT_COLUMNS),
            Table::AuditEvents => ("", AUDIT_EVENT_COLUMNS),
        };
        let sql = format!(
            "SELECT {columns} FROM {} e{join} ORDER BY e.id",
            table.as_str()
        );
        let walk = Walk {
            key,
            table,
            seals: &seals.rows,
            expected: &expected,
            sealed_to,
        };
        let counts = match table {
            Table::FileEvents => {
                walk.run(sqlx::query_as::<_, FileEventRecord>(&sql).fetch(&mut *tx))
                    .await?
            }
            Table::AuditEvents => {
                walk.run(sqlx::query_as::<_, AuditEventRecord>(&sql).fetch(&mut *tx))
                    .await?
            }
        };
        rows += counts.0;
        unsealed += counts.1;
    }
    if let Some(p) = seals.problem {
        return Err(VerifyError::Broken(p));
    }
    let head = seals.rows.last().map(|s| ChainHead {
        seal_id: s.id,
        link: s.link.clone(),
    });
    Ok(Verified {
        rows,
        seals: seals.rows.len() as u64,
        unsealed,
        head,
    })
}

/// One table's rows, in id order, against its seals' lists.
struct Walk<'a> {
    key: &'a AuditKey,
    table: Table,
    seals: &'a [SealRow],
    expected: &'a [Expected],
    /// Every transaction below this is sealed.
    sealed_to: i64,
}

impl Walk<'_> {
    /// Rows checked and rows not sealed yet, or the first row at fault.
    async fn run<R, S>(&self, mut stream: S) -> Result<(u64, u64), VerifyError>
    where
        R: Record,
        S: futures::Stream<Item = Result<R, sqlx::Error>> + Unpin,
    {
        let mut next = 0;
        let mut prev_row: Option<i64> = None;
        let mut macs: HashMap<[u8; 8], i64> = HashMap::new();
        let (mut rows, mut unsealed) = (0u64, 0u64);
        while let Some(r) = stream.try_next().await.step("reading rows to verify")? {
            if let Some(e) = self.expected.get(next).filter(|e| e.id < r.id()) {
                return Err(self.deleted(e, prev_row));
            }
            let sealed = self.expected.get(next).filter(|e| e.id == r.id());
            if sealed.is_some() {
                next += 1;
            }
            self.check(&r, sealed)?;
            // Only valid MACs get here: MAC_LEN bytes.
            if let Some(tag) = r.mac().and_then(|m| m.get(NONCE_LEN..NONCE_LEN + 8)) {
                let mut k = [0; 8];
                k.copy_from_slice(tag);
                if let Some(first) = macs.insert(k, r.id()) {
                    return Err(self.broken(
                        r.id(),
                        format!(
                            "carries the same MAC as row {first}: a copy, inserted behind the coordinator's back"
                        ),
                    ));
                }
            }
            if sealed.is_none() {
                unsealed += 1;
            }
            rows += 1;
            prev_row = Some(r.id());
        }
        if let Some(e) = self.expected.get(next) {
            return Err(self.deleted(e, prev_row));
        }
        Ok((rows, unsealed))
    }

    fn broken(&self, id: i64, what: String) -> VerifyError {
        VerifyError::Broken(format!("{} row {id}: {what}", self.table.as_str()))
    }

    fn deleted(&self, e: &Expected, prev_row: Option<i64>) -> VerifyError {
        let after = match prev_row {
            Some(p) => format!("the successor of row {p}"),
            None => "the first row".into(),
        };
        self.broken(
            e.id,
            format!(
                "was deleted ({after}; sealed by seal {})",
                self.seals[e.seal].id
            ),
        )
    }

    fn check<R: Record>(&self, r: &R, sealed: Option<&Expected>) -> Result<(), VerifyError> {
        let id = r.id();
        // A valid MAC has exactly MAC_LEN bytes; anything else fails.
        let mac_ok = r
            .mac()
            .map(|mac| mac.len() == MAC_LEN && r.mac_ok(self.key, mac));
        let Some(e) = sealed else {
            if r.xid() < self.sealed_to {
                return Err(self.broken(
                    id,
                    "was inserted behind the coordinator's back (its transaction was sealed without it)"
                        .into(),
                ));
            }
            return match mac_ok {
                Some(true) => Ok(()),
                None => Err(self.broken(
                    id,
                    "has no MAC: inserted behind the coordinator's back".into(),
                )),
                Some(false) => Err(self.broken(
                    id,
                    "its MAC does not verify: changed, inserted behind the coordinator's back, \
                     or written with another AUDIT_KEY"
                        .into(),
                )),
            };
        };
        let seal = &self.seals[e.seal];
        let same = r.digest() == e.digest;
        match (mac_ok, same) {
            (Some(true), true) => Ok(()),
            (None, true) if seal.legacy => Ok(()),
            (None, true) => Err(self.broken(
                id,
                format!(
                    "has no MAC: inserted behind the coordinator's back (before seal {} sealed it)",
                    seal.id
                ),
            )),
            (Some(false), true) => Err(self.broken(
                id,
                format!(
                    "its MAC does not verify: written behind the coordinator's back before seal {} \
                     sealed it, or AUDIT_KEY is not the key it was written with",
                    seal.id
                ),
            )),
            (Some(true), false) => Err(self.broken(
                id,
                format!(
                    "was changed since seal {} sealed it: its id, time, transaction or place in the \
                     order differ (rows swapped or moved)",
                    seal.id
                ),
            )),
            (_, false) => Err(self.broken(
                id,
                format!(
                    "was changed since seal {} sealed it (its MAC does not verify)",
                    seal.id
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_keys_and_writes_numbers_by_value() {
        let text = |v: &Value| {
            let mut out = Vec::new();
            canonical_json(v, &mut out);
            String::from_utf8(out).unwrap()
        };
        let v = json!({"b": [1, 2.5, {"z": null, "a": true}], "a": "é\"\n", "ab": -0.0});
        assert_eq!(
            text(&v),
            r#"{"a":"é\"\n","ab":0,"b":[1,2.5,{"a":true,"z":null}]}"#
        );
        // jsonb gives integral floats back as integers, and keeps decimals.
        for (written, read) in [
            ("1e18", "1000000000000000000"),
            ("1e19", "10000000000000000000"),
            ("1e20", "100000000000000000000"),
            ("1.5e-7", "0.00000015"),
            ("-0.0", "0"),
            ("2.0", "2"),
        ] {
            let a: Value = serde_json::from_str(written).unwrap();
            let b: Value = serde_json::from_str(read).unwrap();
            assert_eq!(text(&a), text(&b), "{written} vs {read}");
        }
    }

    #[test]
    fn a_mac_binds_status_detail_and_file() {
        let key = AuditKey::new(b"0123456789abcdef").unwrap();
        let detail = json!({"run_id": "r", "n": 1});
        let version = FileBinding::Version {
            remitter: "acme",
            file_name: "a.csv",
            md5: "00",
        };
        let by_id = file_event_mac(&key, "success", &detail, FileBinding::Id(7));
        let by_version = file_event_mac(&key, "processing", &detail, version);
        assert_eq!(by_id.len(), MAC_LEN);
        assert!(file_event_mac_ok(&key, &by_id, "success", &detail, 7, None));
        assert!(file_event_mac_ok(
            &key,
            &by_version,
            "processing",
            &detail,
            7,
            Some(version)
        ));
        assert!(!file_event_mac_ok(
            &key, &by_id, "success", &detail, 8, None
        ));
        assert!(!file_event_mac_ok(
            &key,
            &by_id,
            "itm_failed",
            &detail,
            7,
            None
        ));
        assert!(!file_event_mac_ok(
            &key,
            &by_id,
            "success",
            &json!({"run_id": "r"}),
            7,
            None
        ));
        let other = FileBinding::Version {
            remitter: "acme",
            file_name: "b.csv",
            md5: "00",
        };
        assert!(!file_event_mac_ok(
            &key,
            &by_version,
            "processing",
            &detail,
            7,
            Some(other)
        ));
        let wrong = AuditKey::new(b"fedcba9876543210").unwrap();
        assert!(!file_event_mac_ok(
            &wrong, &by_id, "success", &detail, 7, None
        ));
        // Every MAC is unique (nonce), so a copied row shows.
        assert_ne!(
            by_id,
            file_event_mac(&key, "success", &detail, FileBinding::Id(7))
        );
    }

    #[test]
    fn an_audit_mac_covers_every_field() {
        let key = AuditKey::development();
        let row = AuditEntry {
            actor: "alice".into(),
            role: Some("operator".into()),
            action: "run.start".into(),
            target: None,
            outcome: Outcome::Ok,
            reason: None,
            remote_addr: Some("127.0.0.1".into()),
            request_id: Some("req".into()),
        };
        let mac = audit_event_mac(&key, &row);
        assert!(audit_event_mac_ok(&key, &mac, &row));
        // None and "" differ; a field moved to another differs.
        let mut moved = row.clone();
        moved.target = Some(String::new());
        assert!(!audit_event_mac_ok(&key, &mac, &moved));
        let mut moved = row.clone();
        moved.reason = moved.request_id.take();
        assert!(!audit_event_mac_ok(&key, &mac, &moved));
    }

    #[test]
    fn keys_are_never_shown_and_short_ones_refused() {
        let key = AuditKey::new(b"a secret of some length").unwrap();
        assert_eq!(format!("{key:?}"), "AuditKey(<redacted>)");
        assert!(!key.is_development());
        assert!(AuditKey::development().is_development());
        assert!(AuditKey::new(b"short").is_err());
    }

    #[test]
    fn seal_ranges_start_with_the_legacy_rows_and_leave_no_gap() {
        let r = |legacy, xid_from, xid_to| SealRange {
            legacy,
            xid_from,
            xid_to,
        };
        // Never sealed, migration (xid 100) still running: nothing.
        assert_eq!(plan_ranges(None, 100, 100), vec![]);
        // Migration finished, nothing else yet: the legacy seal alone.
        assert_eq!(plan_ranges(None, 100, 101), vec![r(true, 0, 101)]);
        assert_eq!(
            plan_ranges(None, 100, 250),
            vec![r(true, 0, 101), r(false, 101, 250)]
        );
        // Later passes start where the last seal ended.
        assert_eq!(plan_ranges(Some(250), 100, 250), vec![]);
        assert_eq!(plan_ranges(Some(250), 100, 260), vec![r(false, 250, 260)]);
        // A horizon held back (a long transaction) never seals backwards.
        assert_eq!(plan_ranges(Some(250), 100, 240), vec![]);
    }

    fn seal_row(
        key: &AuditKey,
        id: i64,
        prev: &[u8],
        legacy: bool,
        from: i64,
        to: i64,
        ids: &[i64],
    ) -> SealRow {
        let mut digests = Vec::new();
        for i in ids {
            digests.extend_from_slice(&i.to_be_bytes());
            digests.extend_from_slice(&[0; 8]);
        }
        let n = ids.len() as i64;
        let link = seal_link(key, prev, "file_events", legacy, from, to, n, &digests);
        SealRow {
            id,
            table_name: "file_events".into(),
            legacy,
            xid_from: from,
            xid_to: to,
            first_id: ids.first().copied(),
            last_id: ids.last().copied(),
            row_count: n,
            digests,
            prev_link: prev.to_vec(),
            link: link.to_vec(),
        }
    }

    #[test]
    fn seals_must_chain_and_continue_each_other() {
        let key = AuditKey::development();
        let a = seal_row(&key, 1, &GENESIS, true, 0, 11, &[]);
        let b = seal_row(&key, 2, &a.link, false, 11, 20, &[3, 1]);
        let c = seal_row(&key, 3, &b.link, false, 20, 30, &[2, 5]);
        let link_b = b.link.clone();
        let ok = check_seals(&key, vec![a, b, c]);
        assert_eq!(
            ok.problem.as_deref(),
            Some("audit_seals seal 2: its rows are not in id order")
        );
        let ids: Vec<i64> = ok.expected[&Table::FileEvents]
            .iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(ids, [1, 2, 3, 5], "ids of several seals interleave");
        assert_eq!(ok.sealed_to[&Table::FileEvents], 30);

        let a = seal_row(&key, 1, &GENESIS, true, 0, 11, &[]);
        let c = seal_row(&key, 3, &link_b, false, 20, 30, &[2, 5]);
        let p = check_seals(&key, vec![a, c]).problem.unwrap();
        assert!(
            p.starts_with("audit_seals seal 3: does not follow seal 1"),
            "{p}"
        );

        let a = seal_row(&key, 1, &GENESIS, true, 0, 11, &[]);
        let gap = seal_row(&key, 2, &a.link, false, 12, 20, &[4]);
        let p = check_seals(&key, vec![a, gap]).problem.unwrap();
        assert!(p.contains("transactions 11 to 12 are not sealed"), "{p}");

        let wrong = AuditKey::new(b"another key, not the one").unwrap();
        let a = seal_row(&key, 1, &GENESIS, true, 0, 11, &[]);
        let p = check_seals(&wrong, vec![a]).problem.unwrap();
        assert!(p.contains("its link does not verify"), "{p}");
    }
}
