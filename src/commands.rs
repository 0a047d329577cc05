//! The administrative programs (CONTRACT §11): `coordinator token ...`,
//! `coordinator audit export` and `coordinator audit verify`. They need the
//! database, and those that write or check the chain `AUDIT_KEY`.

use crate::app::migrated_store;
use crate::auth::tokens::{self, ManageError};
use crate::cli::{AuditCommand, TokenCommand};
use crate::config::{BaseArgs, DbArgs};
use crate::store::{
    AuditEntry, AuditFilter, AuditKey, AuditStore, Outcome, TokenError, TokenStore,
};
use anyhow::Context;
use chrono::{DateTime, NaiveDate, Utc};
use std::io::Write;

/// Rows read per query by the export.
const EXPORT_BATCH: i64 = 10_000;

/// A date (midnight UTC) or an RFC 3339 time.
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or_else(|| "not a date (2026-12-01) or an RFC 3339 time (2026-12-01T08:00:00Z)".into())
}

/// Who runs the CLI, for the audit trail: `cli:` and the login name.
fn cli_actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}")
}

/// The CLI's part of its audit rows: actor `cli:<login>`, role admin.
fn cli_entry() -> AuditEntry {
    AuditEntry {
        actor: cli_actor(),
        role: Some("admin".into()),
        action: String::new(),
        target: None,
        outcome: Outcome::Ok,
        reason: None,
        remote_addr: None,
        request_id: None,
    }
}

async fn store(db: DbArgs) -> anyhow::Result<crate::store::PgStore> {
    let url = db.database_url()?;
    migrated_store(url.expose()).await
}

/// A store that writes audit rows with `AUDIT_KEY` (the development key only
/// with `ENV=local`, said on standard error).
async fn keyed_store(admin: BaseArgs) -> anyhow::Result<crate::store::PgStore> {
    let key = dev_key_warned(admin.audit.resolve(admin.env)?);
    Ok(store(admin.db).await?.with_audit_key(key))
}

fn dev_key_warned(key: AuditKey) -> AuditKey {
    if key.is_development() {
        eprintln!(
            "coordinator: warning: {}",
            crate::config::DEVELOPMENT_AUDIT_KEY_WARNING
        );
    }
    key
}

/// `coordinator token ...`; the exit code.
pub async fn token(cmd: TokenCommand) -> anyhow::Result<i32> {
    match cmd {
        TokenCommand::Create {
            name,
            role,
            expires_in_days,
            admin,
        } => {
            let store = keyed_store(admin).await?;
            let by = cli_entry();
            let created = tokens::create(&store, &store, &by, &name, role, expires_in_days).await;
            refused_is_1(created.map(|(t, secret)| {
                eprintln!(
                    "created token {:?} ({}, expires {}); its secret, shown once:",
                    t.name,
                    t.role,
                    t.expires_at.map_or("never".into(), |e| e.to_rfc3339())
                );
                println!("{secret}");
            }))
        }
        TokenCommand::List { db } => {
            let store = store(db).await?;
            let tokens = store.list_tokens().await?;
            let when = |t: Option<DateTime<Utc>>| {
                t.map_or("-".to_string(), |t| {
                    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
                })
            };
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "{:<24} {:<8} {:<20} {:<20} {:<20} REVOKED",
                "NAME", "ROLE", "CREATED", "EXPIRES", "LAST USED"
            )?;
            for t in tokens {
                let revoked = match (t.revoked_at, &t.revoked_by) {
                    (Some(at), Some(by)) => format!("{} by {by}", when(Some(at))),
                    (at, _) => when(at),
                };
                writeln!(
                    out,
                    "{:<24} {:<8} {:<20} {:<20} {:<20} {revoked}",
                    t.name,
                    t.role,
                    when(Some(t.created_at)),
                    when(t.expires_at),
                    when(t.last_used_at),
                )?;
            }
            Ok(0)
        }
        TokenCommand::Revoke { name, admin } => {
            let store = keyed_store(admin).await?;
            let revoked = tokens::revoke(&store, &store, &cli_entry(), &name).await;
            refused_is_1(revoked.map(|_| {
                eprintln!("revoked token {name:?}: every instance refuses it within 5 seconds");
            }))
        }
    }
}

/// Exit 0 when done, 1 (said on standard error) when the request was
/// refused; a database failure is the program's error (exit 2).
fn refused_is_1(result: Result<(), ManageError>) -> anyhow::Result<i32> {
    match result {
        Ok(()) => Ok(0),
        Err(ManageError::Token(TokenError::Store(e))) => Err(e.into()),
        Err(e) => {
            eprintln!("coordinator: {e}");
            Ok(1)
        }
    }
}

/// `coordinator audit ...`; the exit code.
pub async fn audit(cmd: AuditCommand) -> anyhow::Result<i32> {
    match cmd {
        AuditCommand::Verify(args) => verify(args).await,
        AuditCommand::Export { since, until, db } => {
            let store = store(db).await?;
            let filter = AuditFilter {
                since,
                until,
                ..AuditFilter::default()
            };
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let mut after = 0;
            loop {
                let rows = store.audit_batch(&filter, after, EXPORT_BATCH).await?;
                let Some(last) = rows.last() else { break };
                after = last.id;
                for r in &rows {
                    serde_json::to_writer(&mut out, r)?;
                    out.write_all(b"\n")?;
                }
            }
            out.flush()?;
            Ok(0)
        }
    }
}

/// `coordinator audit verify`: 0 and the rows checked on an intact chain,
/// 1 naming the first row (or seal) at fault; reads only.
async fn verify(args: BaseArgs) -> anyhow::Result<i32> {
    let url = args.db.database_url()?;
    let key = dev_key_warned(args.audit.resolve(args.env)?);
    // The walk is one long statement by design: no "slow statement" line.
    let options: sqlx::postgres::PgConnectOptions =
        url.expose().parse().context("parsing DATABASE_URL")?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(sqlx::ConnectOptions::disable_statement_logging(options))
        .await
        .context("connecting to the database")?;
    let verified = crate::store::audit_chain::verify(&pool, &key).await;
    pool.close().await;
    match verified {
        Ok(v) => {
            println!(
                "ok: {} rows checked ({} seals; {} newer than the last seal, checked by their MAC only)",
                v.rows, v.seals, v.unsealed
            );
            if let Some(head) = v.head {
                println!("head: seal {} link {}", head.seal_id, head.link_hex());
            }
            Ok(0)
        }
        Err(crate::store::audit_chain::VerifyError::Broken(why)) => {
            println!("chain broken: {why}");
            Ok(1)
        }
        // The error's text already carries its cause.
        Err(crate::store::audit_chain::VerifyError::Store(e)) => {
            Err(anyhow::anyhow!("reading the audit chain: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn times() {
        let t = super::parse_time("2026-12-01").expect("a date");
        assert_eq!(t.to_rfc3339(), "2026-12-01T00:00:00+00:00");
        let t = super::parse_time("2026-12-01T08:30:00+01:00").expect("a time");
        assert_eq!(t.to_rfc3339(), "2026-12-01T07:30:00+00:00");
        assert!(super::parse_time("yesterday").is_err());
    }
}
