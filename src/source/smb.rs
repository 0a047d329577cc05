//! The SMB share, through `smb2` (pure Rust SMB2/3, vendored with one fix:
//! `vendor/smb2/PATCHED.md`).
//!
//! Calls are pipelined: every task sends its requests on a clone of one
//! connection and they overlap on the wire, so listings of many folders,
//! downloads and archive moves run at the same time instead of one after
//! another. Each call is bounded by a timeout; a connection that is lost or
//! stops answering is dropped and the next call connects again (a read-only
//! call is sent again at once, once).
//!
//! Three SMB semantics the coordinator relies on, all done on the server:
//! - downloads open the file sharing read access only (deny write): the
//!   open fails with a sharing violation while another client holds the
//!   file open for writing, and no client can open it for writing while it
//!   is read. That stops SMB clients only (not a process on the file server
//!   itself, NFS, or a Samba without share modes), so after the last byte a
//!   deny-write handle held through the read is closed asking for the
//!   file's size and times (`SMB2_CLOSE_FLAG_POSTQUERY_ATTRIB`, a fresh stat
//!   as the server lets go of it), and that answer is what the download
//!   reports;
//! - a move opens the source the same way, checks the size and last-write
//!   time that the open returns, and renames through that handle with
//!   `ReplaceIfExists = 0`: nothing can change the file between check and
//!   rename, and an existing target is never replaced
//!   (`STATUS_OBJECT_NAME_COLLISION`);
//! - folders are created one level at a time, an existing one is fine.

use super::{Content, Entry, Expected, Fetched, FileSource, IN_MEMORY_MAX, Moved, SourceError};
use crate::spool::HashingSpool;
use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use futures::FutureExt;
use futures::future::BoxFuture;
use smb2::client::connection::{Connection, Frame};
use smb2::msg::close::{CloseRequest, CloseResponse, SMB2_CLOSE_FLAG_POSTQUERY_ATTRIB};
use smb2::msg::create::{
    CreateDisposition, CreateRequest, CreateResponse, ImpersonationLevel, ShareAccess,
};
use smb2::msg::header::Header;
use smb2::msg::negotiate::{
    CIPHER_AES_128_CCM, CIPHER_AES_128_GCM, HASH_ALGORITHM_SHA512, NegotiateContext,
    NegotiateRequest, NegotiateResponse,
};
use smb2::msg::query_info::InfoType;
use smb2::msg::read::{ReadRequest, ReadResponse};
use smb2::msg::set_info::SetInfoRequest;
use smb2::pack::{FileTime, Guid, Pack, ReadCursor, Unpack, WriteCursor};
use smb2::types::Dialect;
use smb2::types::flags::FileAccessMask;
use smb2::types::flags::{Capabilities, SecurityMode};
use smb2::types::status::NtStatus;
use smb2::types::{Command, CreditCharge, FileId, OplockLevel};
use smb2::{ClientConfig, CompoundOp, ErrorKind, FileDownload, SmbClient, Tree};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// How to reach the share. `Debug` never shows the password.
#[derive(Clone)]
pub struct SmbConfig {
    /// Server host name or address.
    pub host: String,
    /// TCP port (445 by default).
    pub port: u16,
    /// Share name.
    pub share: String,
    /// NTLM user.
    pub username: String,
    /// NTLM password.
    pub password: String,
    /// NTLM domain (workgroup), may be empty.
    pub domain: String,
    /// Bound on every metadata call and on each request of a transfer.
    pub timeout: Duration,
    /// Which messages the session signs.
    pub signing: Signing,
}

/// Which SMB messages the coordinator signs (`SMB_SIGNING`). Encryption,
/// where the share has it, protects every message either way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Signing {
    /// Everything when the server requires signing; otherwise only the tree
    /// connect (SMB 3.1.1), as smbclient and Windows clients do by default.
    #[default]
    IfRequired,
    /// Every message, every response verified, and the session marked as
    /// requiring signing so the server refuses an unsigned request in it.
    Required,
}

impl From<Signing> for smb2::Signing {
    fn from(s: Signing) -> Self {
        match s {
            Signing::IfRequired => smb2::Signing::IfRequired,
            Signing::Required => smb2::Signing::Required,
        }
    }
}

impl std::fmt::Debug for SmbConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmbConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("share", &self.share)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("domain", &self.domain)
            .field("timeout", &self.timeout)
            .field("signing", &self.signing)
            .finish()
    }
}

/// Bytes asked for by each READ of a download (several are in flight).
const READ_CHUNK: u32 = 1 << 20;

/// `FILE_NON_DIRECTORY_FILE`: the open fails on a folder.
const NON_DIRECTORY: u32 = 0x40;
/// `FILE_ATTRIBUTE_DIRECTORY`.
const ATTR_DIRECTORY: u32 = 0x10;
/// `FileRenameInformation` (MS-FSCC 2.4.42).
const FILE_RENAME_INFORMATION: u8 = 10;

/// One signed-in session with the share's tree connected.
struct Live {
    /// Kept so the session lives as long as its connection clones are used.
    _client: std::sync::Mutex<SmbClient>,
    tree: Arc<Tree>,
    conn: Connection,
}

/// A share reached over SMB2/3 (see the module docs).
pub struct SmbShare {
    config: SmbConfig,
    live: tokio::sync::Mutex<Option<Arc<Live>>>,
}

/// Whether an operation may simply be sent again on a fresh connection.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Reads and idempotent changes: one retry after a lost connection.
    OnDisconnect,
    /// Renames and writes: a lost answer may hide a success.
    Never,
}

/// An MD5 that OpenSSL could not compute, as the read's error.
fn hash_error<T>(op: &str, r: std::io::Result<T>) -> Result<T, SourceError> {
    r.map_err(|e| SourceError::Io {
        op: format!("{op}: hashing"),
        message: e.to_string(),
    })
}

/// The SMB2 error `e` of operation `op` as a [`SourceError`].
fn classify(op: &str, e: smb2::Error) -> SourceError {
    let message = e.to_string();
    match e.kind() {
        ErrorKind::NotFound | ErrorKind::NotADirectory => SourceError::NotFound(op.to_string()),
        ErrorKind::AlreadyExists => SourceError::AlreadyExists(op.to_string()),
        ErrorKind::AccessDenied => SourceError::PermissionDenied(op.to_string()),
        ErrorKind::SharingViolation => SourceError::Busy(op.to_string()),
        ErrorKind::ConnectionLost | ErrorKind::SessionExpired => SourceError::Disconnected {
            op: op.to_string(),
            message,
        },
        _ => SourceError::Io {
            op: op.to_string(),
            message,
        },
    }
}

/// A non-success status of `command` as an error.
fn status_error(op: &str, status: NtStatus, command: Command) -> SourceError {
    classify(op, smb2::Error::Protocol { status, command })
}

/// Server times to microseconds: what Postgres keeps, so a stored time
/// compares equal to the next listing's.
fn to_utc(t: FileTime) -> DateTime<Utc> {
    t.to_system_time()
        .map(DateTime::<Utc>::from)
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
        .trunc_subsecs(6)
}

/// A NEGOTIATE request, NetBIOS-framed, offering every dialect smb2 knows
/// (with the contexts SMB 3.1.1 requires), as the first and only message
/// of a connection.
fn negotiate_request() -> Vec<u8> {
    let id = uuid::Uuid::new_v4();
    let salt = [*uuid::Uuid::new_v4().as_bytes(), *id.as_bytes()].concat();
    let (data1, data2, data3, data4) = id.as_fields();
    let request = NegotiateRequest {
        security_mode: SecurityMode::new(SecurityMode::SIGNING_ENABLED),
        capabilities: Capabilities::new(0),
        client_guid: Guid {
            data1,
            data2,
            data3,
            data4: *data4,
        },
        dialects: Dialect::ALL.to_vec(),
        negotiate_contexts: vec![
            NegotiateContext::PreauthIntegrity {
                hash_algorithms: vec![HASH_ALGORITHM_SHA512],
                salt,
            },
            NegotiateContext::Encryption {
                ciphers: vec![CIPHER_AES_128_GCM, CIPHER_AES_128_CCM],
            },
        ],
    };
    let mut header = Header::new_request(Command::Negotiate);
    header.tree_id = None;
    let mut w = WriteCursor::new();
    w.write_bytes(&[0; 4]);
    header.pack(&mut w);
    request.pack(&mut w);
    let mut frame = w.into_inner();
    let len = (frame.len() - 4) as u32;
    frame[1..4].copy_from_slice(&len.to_be_bytes()[1..]);
    frame
}

/// The server's clock in the NEGOTIATE answer `message` (one NetBIOS
/// payload: SMB2 header and body).
fn negotiated_time(message: &[u8]) -> Result<FileTime, String> {
    let mut cursor = ReadCursor::new(message);
    let header = Header::unpack(&mut cursor).map_err(|e| e.to_string())?;
    if header.command != Command::Negotiate || !header.is_response() {
        return Err(format!("answered {:?}", header.command));
    }
    if header.status != NtStatus::SUCCESS {
        return Err(format!("refused: {:?}", header.status));
    }
    let body = message.get(Header::SIZE..).unwrap_or_default();
    let answer =
        NegotiateResponse::unpack(&mut ReadCursor::new(body)).map_err(|e| e.to_string())?;
    let time = FileTime(answer.system_time);
    if time.to_system_time().is_none() {
        return Err(format!("no system time ({})", answer.system_time));
    }
    Ok(time)
}

/// The server's current time, read only: its clock from the SystemTime of
/// the NEGOTIATE answer on a connection of its own (nothing signed in,
/// nothing written), advanced by the local time since, half the round
/// trip included. It is the clock smbd reads, which is the one the kernel
/// stamps files with on the server (measured to agree with a written
/// file's last-write time within a millisecond: README).
async fn negotiate_clock(host: &str, port: u16) -> Result<DateTime<Utc>, String> {
    use tokio::io::AsyncReadExt;
    let mut socket = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| e.to_string())?;
    let request = negotiate_request();
    let sent = std::time::Instant::now();
    socket
        .write_all(&request)
        .await
        .map_err(|e| e.to_string())?;
    let mut len = [0u8; 4];
    socket
        .read_exact(&mut len)
        .await
        .map_err(|e| e.to_string())?;
    let received = std::time::Instant::now();
    let len = u32::from_be_bytes([0, len[1], len[2], len[3]]) as usize;
    let mut message = vec![0u8; len.min(1 << 16)];
    socket
        .read_exact(&mut message)
        .await
        .map_err(|e| e.to_string())?;
    let time = negotiated_time(&message)?;
    let at = time
        .to_system_time()
        .map(DateTime::<Utc>::from)
        .ok_or("no system time")?;
    let since = received.elapsed() + received.duration_since(sent) / 2;
    Ok(at + since)
}

/// The last path segment.
fn base(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn entry_of_open(path: &str, r: &CreateResponse) -> Entry {
    Entry {
        name: base(path).to_string(),
        is_dir: r.file_attributes & ATTR_DIRECTORY != 0,
        size: r.end_of_file,
        mtime: to_utc(r.last_write_time),
        ctime: to_utc(r.change_time),
    }
}

/// The file's metadata in the answer to a CLOSE sent with
/// `SMB2_CLOSE_FLAG_POSTQUERY_ATTRIB`; `None` when the server could not
/// give it (the flag is not echoed: e.g. the file is gone).
fn entry_of_close(path: &str, r: &CloseResponse) -> Option<Entry> {
    (r.flags & SMB2_CLOSE_FLAG_POSTQUERY_ATTRIB != 0).then(|| Entry {
        name: base(path).to_string(),
        is_dir: r.file_attributes & ATTR_DIRECTORY != 0,
        size: r.end_of_file,
        mtime: to_utc(r.last_write_time),
        ctime: to_utc(r.change_time),
    })
}

/// A CLOSE of `file_id` that asks for the file's size and times.
fn close_with_attributes(file_id: FileId) -> CloseRequest {
    CloseRequest {
        flags: SMB2_CLOSE_FLAG_POSTQUERY_ATTRIB,
        file_id,
    }
}

/// The metadata in the answer `frame` to [`close_with_attributes`].
fn closed_entry(op: &str, path: &str, frame: &Frame) -> Result<Entry, SourceError> {
    if frame.header.status != NtStatus::SUCCESS {
        return Err(status_error(op, frame.header.status, Command::Close));
    }
    let answer =
        CloseResponse::unpack(&mut ReadCursor::new(&frame.body)).map_err(|e| classify(op, e))?;
    entry_of_close(path, &answer)
        .ok_or_else(|| SourceError::NotFound(format!("{op} (gone when closed)")))
}

/// Closes `file_id` and returns the file's size and times the server found
/// as it let go of the handle.
async fn close_and_query(
    tree: &Tree,
    conn: &Connection,
    op: &str,
    path: &str,
    file_id: FileId,
) -> Result<Entry, SourceError> {
    let frame = conn
        .execute(
            Command::Close,
            &close_with_attributes(file_id),
            Some(tree.tree_id),
        )
        .await
        .map_err(|e| classify(op, e))?;
    closed_entry(op, path, &frame)
}

/// A CREATE that opens an existing file sharing read access only.
fn deny_write_open(path: &str, access: u32) -> CreateRequest {
    CreateRequest {
        requested_oplock_level: OplockLevel::None,
        impersonation_level: ImpersonationLevel::Impersonation,
        desired_access: FileAccessMask::new(
            access | FileAccessMask::FILE_READ_ATTRIBUTES | FileAccessMask::SYNCHRONIZE,
        ),
        file_attributes: 0,
        share_access: ShareAccess(ShareAccess::FILE_SHARE_READ),
        create_disposition: CreateDisposition::FileOpen,
        create_options: NON_DIRECTORY,
        name: smb2::encode_path(path),
        create_contexts: vec![],
    }
}

/// Sends `req` and returns the opened handle's CREATE response.
async fn open(
    tree: &Tree,
    conn: &Connection,
    op: &str,
    req: &CreateRequest,
) -> Result<CreateResponse, SourceError> {
    let frame = conn
        .execute(Command::Create, req, Some(tree.tree_id))
        .await
        .map_err(|e| classify(op, e))?;
    if frame.header.status != NtStatus::SUCCESS {
        return Err(status_error(op, frame.header.status, Command::Create));
    }
    CreateResponse::unpack(&mut ReadCursor::new(&frame.body)).map_err(|e| classify(op, e))
}

/// `FILE_RENAME_INFORMATION_TYPE_2` naming `to`, never replacing it.
fn rename_info(to: &str) -> Vec<u8> {
    let name: Vec<u16> = smb2::encode_path(to).encode_utf16().collect();
    let mut buf = Vec::with_capacity(20 + name.len() * 2);
    buf.push(0); // ReplaceIfExists = FALSE
    buf.extend_from_slice(&[0u8; 7]);
    buf.extend_from_slice(&0u64.to_le_bytes()); // RootDirectory
    buf.extend_from_slice(&((name.len() * 2) as u32).to_le_bytes());
    for u in name {
        buf.extend_from_slice(&u.to_le_bytes());
    }
    buf
}

/// Renames the open handle `file_id` to `to` and closes it, in one compound
/// request; a refused rename still closes the handle.
async fn rename_and_close(
    tree: &Tree,
    conn: &mut Connection,
    op: &str,
    file_id: FileId,
    to: &str,
) -> Result<(), SourceError> {
    let set = SetInfoRequest {
        info_type: InfoType::File,
        file_info_class: FILE_RENAME_INFORMATION,
        additional_information: 0,
        file_id,
        buffer: rename_info(to),
    };
    let close = CloseRequest { flags: 0, file_id };
    let ops = [
        CompoundOp::new(Command::SetInfo, &set, Some(tree.tree_id)),
        CompoundOp::new(Command::Close, &close, Some(tree.tree_id)),
    ];
    let answers = conn
        .execute_compound(&ops)
        .await
        .map_err(|e| classify(op, e));
    let frames = match answers.and_then(|a| frames_of(op, a, 2)) {
        Ok(frames) => frames,
        Err(e) => {
            // The handle may still be open: close it, the answer is lost anyway.
            let _ = tree.close_handle(conn, file_id).await;
            return Err(e);
        }
    };
    let (renamed, closed) = (frames[0].header.status, frames[1].header.status);
    if renamed != NtStatus::SUCCESS {
        // A refused SET_INFO makes the related CLOSE fail with it.
        if closed != NtStatus::SUCCESS {
            let _ = tree.close_handle(conn, file_id).await;
        }
        return Err(status_error(op, renamed, Command::SetInfo));
    }
    Ok(())
}

/// The frames of a compound, all of them, or the first transport error.
fn frames_of(
    op: &str,
    frames: Vec<smb2::Result<Frame>>,
    expected: usize,
) -> Result<Vec<Frame>, SourceError> {
    let frames = frames
        .into_iter()
        .collect::<smb2::Result<Vec<_>>>()
        .map_err(|e| classify(op, e))?;
    if frames.len() != expected {
        return Err(SourceError::Io {
            op: op.to_string(),
            message: format!("{} answers to a compound of {expected}", frames.len()),
        });
    }
    Ok(frames)
}

/// A file read whole by [`read_small`].
struct Small {
    bytes: Vec<u8>,
    /// Its metadata as the open found it.
    opened: Entry,
    /// Its metadata after the READ, from the CLOSE.
    after: Entry,
}

/// A whole file of at most [`IN_MEMORY_MAX`] bytes in one round trip: the
/// deny-write CREATE, one READ and a CLOSE that returns the file's size and
/// times after the read, in a compound. `None` when the file is larger
/// (nothing kept; the caller streams it through a new open).
async fn read_small(
    tree: &Tree,
    conn: &mut Connection,
    op: &str,
    path: &str,
) -> Result<Option<Small>, SourceError> {
    let max_read = conn.params().map(|p| p.max_read_size).unwrap_or(65536);
    let requested = IN_MEMORY_MAX.min(u64::from(max_read)).max(1) as u32;
    let create = deny_write_open(path, FileAccessMask::FILE_READ_DATA);
    let read = ReadRequest {
        padding: 0x50,
        flags: 0,
        length: requested,
        offset: 0,
        file_id: FileId::SENTINEL,
        minimum_count: 0,
        channel: 0,
        remaining_bytes: 0,
        read_channel_info: vec![],
    };
    let close = close_with_attributes(FileId::SENTINEL);
    let tid = Some(tree.tree_id);
    let ops = [
        CompoundOp::new(Command::Create, &create, tid),
        CompoundOp {
            command: Command::Read,
            body: &read,
            tree_id: tid,
            // One credit per 64 KiB asked for (MS-SMB2 3.2.4.1.2).
            credit_charge: CreditCharge(u64::from(requested).div_ceil(65536) as u16),
        },
        CompoundOp::new(Command::Close, &close, tid),
    ];
    let answers = conn
        .execute_compound(&ops)
        .await
        .map_err(|e| classify(op, e))?;
    let frames = frames_of(op, answers, 3)?;
    if frames[0].header.status != NtStatus::SUCCESS {
        return Err(status_error(op, frames[0].header.status, Command::Create));
    }
    let opened = CreateResponse::unpack(&mut ReadCursor::new(&frames[0].body))
        .map_err(|e| classify(op, e))?;
    if frames[2].header.status != NtStatus::SUCCESS {
        let _ = tree.close_handle(conn, opened.file_id).await;
    }
    let read_status = frames[1].header.status;
    if read_status != NtStatus::SUCCESS && read_status != NtStatus::END_OF_FILE {
        return Err(status_error(op, read_status, Command::Read));
    }
    if opened.end_of_file > u64::from(requested) {
        return Ok(None);
    }
    let after = closed_entry(op, path, &frames[2])?;
    let bytes = if read_status == NtStatus::END_OF_FILE {
        Vec::new()
    } else {
        ReadResponse::unpack(&mut ReadCursor::new(&frames[1].body))
            .map_err(|e| classify(op, e))?
            .data
    };
    Ok(Some(Small {
        bytes,
        opened: entry_of_open(path, &opened),
        after,
    }))
}

/// Logs when the file changed between its open and the end of the read
/// (the caller compares `after` with the second look and finds it unstable).
fn note_change(path: &str, opened: &Entry, after: &Entry, read: u64) {
    if opened != after || read != after.size {
        tracing::info!(
            path,
            opened_size = opened.size,
            size_after = after.size,
            read,
            "the file changed while it was read"
        );
    }
}

/// Opens the file with `request` and streams it, pipelined, into memory or
/// (above [`IN_MEMORY_MAX`]) the spool file `dest`: MD5, bytes read and
/// where they are. The download closes its handle after the last chunk.
async fn stream(
    tree: &Tree,
    conn: &mut Connection,
    op: &str,
    request: &CreateRequest,
    dest: &Path,
    chunk_timeout: Duration,
) -> Result<(String, u64, Content), SourceError> {
    let timed_out = |_| SourceError::Timeout {
        op: op.to_string(),
        secs: chunk_timeout.as_secs(),
    };
    let opened = tokio::time::timeout(chunk_timeout, open(tree, conn, op, request))
        .await
        .map_err(timed_out)??;
    let spool_error = |e: std::io::Error| SourceError::Io {
        op: format!("write spool file {}", dest.display()),
        message: e.to_string(),
    };
    let mut download =
        FileDownload::new(tree, conn, opened.file_id, opened.end_of_file, READ_CHUNK);
    if opened.end_of_file > IN_MEMORY_MAX {
        // Hashed and written by the spool's own thread, beside this one.
        let spool = HashingSpool::create(dest).await.map_err(spool_error)?;
        loop {
            match tokio::time::timeout(chunk_timeout, download.next_bytes())
                .await
                .map_err(timed_out)?
            {
                None => break,
                Some(Err(e)) => return Err(classify(op, e)),
                Some(Ok(bytes)) => spool.write(bytes).await.map_err(spool_error)?,
            }
        }
        let (md5, size) = spool.finish().await.map_err(spool_error)?;
        return Ok((md5, size, Content::Spooled(dest.to_path_buf())));
    }
    let mut memory = Vec::with_capacity(opened.end_of_file as usize);
    loop {
        match tokio::time::timeout(chunk_timeout, download.next_bytes())
            .await
            .map_err(timed_out)?
        {
            None => break,
            Some(Err(e)) => return Err(classify(op, e)),
            Some(Ok(bytes)) => memory.extend_from_slice(&bytes),
        }
    }
    let md5 = hash_error(op, crate::hash::md5_hex(&memory))?;
    let size = memory.len() as u64;
    Ok((md5, size, Content::Memory(memory)))
}

impl SmbShare {
    /// A share handle; nothing is connected until the first call.
    pub fn new(config: SmbConfig) -> Self {
        Self {
            config,
            live: tokio::sync::Mutex::new(None),
        }
    }

    /// The current session, connecting first if there is none. Callers
    /// that arrive while a connect is under way wait for it.
    async fn live(&self) -> Result<Arc<Live>, SourceError> {
        let mut guard = self.live.lock().await;
        if let Some(l) = guard.as_ref() {
            return Ok(l.clone());
        }
        let c = &self.config;
        let config = ClientConfig {
            addr: format!("{}:{}", c.host, c.port),
            username: c.username.clone(),
            password: c.password.clone(),
            domain: c.domain.clone(),
            timeout: c.timeout,
            response_timeout: Some(c.timeout),
            auto_reconnect: false,
            compression: false,
            dfs_enabled: false,
            signing: c.signing.into(),
            ..Default::default()
        };
        let connect = async {
            let mut client = SmbClient::connect(config).await?;
            let tree = client.connect_share(&c.share).await?;
            let conn = client.connection_for(&tree)?;
            Ok::<_, smb2::Error>(Live {
                _client: std::sync::Mutex::new(client),
                tree: Arc::new(tree),
                conn,
            })
        };
        let live = match tokio::time::timeout(c.timeout.saturating_mul(2), connect).await {
            Ok(Ok(l)) => Arc::new(l),
            Ok(Err(e)) => return Err(classify("connect", e)),
            Err(_) => {
                return Err(SourceError::Timeout {
                    op: "connect".into(),
                    secs: c.timeout.as_secs() * 2,
                });
            }
        };
        *guard = Some(live.clone());
        Ok(live)
    }

    /// Forgets `failed` (if still current) so the next call connects again.
    async fn reset(&self, failed: &Arc<Live>) {
        let mut guard = self.live.lock().await;
        if guard.as_ref().is_some_and(|l| Arc::ptr_eq(l, failed)) {
            *guard = None;
        }
    }

    /// Runs `f` on the session, bounded by `timeout` when given. After a lost
    /// or silent connection the session is dropped; with
    /// [`Retry::OnDisconnect`] the call is sent once more on a new one.
    async fn call<T, F>(
        &self,
        op: String,
        timeout: Option<Duration>,
        retry: Retry,
        f: F,
    ) -> Result<T, SourceError>
    where
        F: Fn(Arc<Tree>, Connection) -> BoxFuture<'static, Result<T, SourceError>>,
    {
        let first = self.call_once(&op, timeout, &f).await;
        match first {
            Err(SourceError::Disconnected { .. }) if retry == Retry::OnDisconnect => {
                tracing::warn!(op = %op, "SMB connection lost; reconnecting once");
                self.call_once(&op, timeout, &f).await
            }
            other => other,
        }
    }

    async fn call_once<T, F>(
        &self,
        op: &str,
        timeout: Option<Duration>,
        f: &F,
    ) -> Result<T, SourceError>
    where
        F: Fn(Arc<Tree>, Connection) -> BoxFuture<'static, Result<T, SourceError>>,
    {
        let live = self.live().await?;
        let fut = f(live.tree.clone(), live.conn.clone());
        let result = match timeout {
            Some(t) => match tokio::time::timeout(t, fut).await {
                Ok(r) => r,
                Err(_) => Err(SourceError::Timeout {
                    op: op.to_string(),
                    secs: t.as_secs(),
                }),
            },
            None => fut.await,
        };
        if matches!(
            result,
            Err(SourceError::Disconnected { .. } | SourceError::Timeout { .. })
        ) || live.conn.is_disconnected()
        {
            self.reset(&live).await;
        }
        result
    }

    /// Writes `bytes` to `path` (creating or truncating it).
    pub async fn write_file(&self, path: &str, bytes: Vec<u8>) -> Result<(), SourceError> {
        let (p, bytes) = (path.to_string(), Arc::new(bytes));
        self.call(
            format!("write {path}"),
            Some(self.config.timeout),
            Retry::OnDisconnect,
            move |tree, mut conn| {
                let (p, bytes) = (p.clone(), bytes.clone());
                async move {
                    tree.write_file(&mut conn, &p, &bytes)
                        .await
                        .map(|_| ())
                        .map_err(|e| classify(&format!("write {p}"), e))
                }
                .boxed()
            },
        )
        .await
    }

    /// Removes the file at `path`.
    pub async fn remove_file(&self, path: &str) -> Result<(), SourceError> {
        let p = path.to_string();
        self.call(
            format!("unlink {path}"),
            Some(self.config.timeout),
            Retry::Never,
            move |tree, mut conn| {
                let p = p.clone();
                async move {
                    tree.delete_file(&mut conn, &p)
                        .await
                        .map_err(|e| classify(&format!("unlink {p}"), e))
                }
                .boxed()
            },
        )
        .await
    }
}

async fn stat_entry(tree: &Tree, conn: &mut Connection, path: &str) -> Result<Entry, SourceError> {
    let st = tree
        .stat(conn, path)
        .await
        .map_err(|e| classify(&format!("stat {path}"), e))?;
    Ok(Entry {
        name: base(path).to_string(),
        is_dir: st.is_directory,
        size: st.size,
        mtime: to_utc(st.modified),
        ctime: to_utc(st.changed),
    })
}

#[async_trait]
impl FileSource for SmbShare {
    async fn list(&self, dir: &str) -> Result<Vec<Entry>, SourceError> {
        let d = dir.to_string();
        self.call(
            format!("list {dir}"),
            Some(self.config.timeout),
            Retry::OnDisconnect,
            move |tree, mut conn| {
                let d = d.clone();
                async move {
                    let items = tree
                        .list_directory(&mut conn, &d)
                        .await
                        .map_err(|e| classify(&format!("list {d}"), e))?;
                    Ok(items
                        .into_iter()
                        .filter(|i| i.name != "." && i.name != "..")
                        .map(|i| Entry {
                            is_dir: i.is_directory,
                            name: i.name,
                            size: i.size,
                            mtime: to_utc(i.modified),
                            ctime: to_utc(i.changed),
                        })
                        .collect())
                }
                .boxed()
            },
        )
        .await
    }

    async fn stat(&self, path: &str) -> Result<Entry, SourceError> {
        let p = path.to_string();
        self.call(
            format!("stat {path}"),
            Some(self.config.timeout),
            Retry::OnDisconnect,
            move |tree, mut conn| {
                let p = p.clone();
                async move { stat_entry(&tree, &mut conn, &p).await }.boxed()
            },
        )
        .await
    }

    async fn fetch(&self, path: &str, dest: &Path) -> Result<Fetched, SourceError> {
        let p = path.to_string();
        let dest: PathBuf = dest.to_path_buf();
        let chunk_timeout = self.config.timeout;
        // No overall bound: each request is bounded by the timeout.
        self.call(
            format!("read {path}"),
            None,
            Retry::OnDisconnect,
            move |tree, mut conn| {
                let (p, dest) = (p.clone(), dest.clone());
                async move {
                    let op = format!("read {p}");
                    let timed_out = |_| SourceError::Timeout {
                        op: op.clone(),
                        secs: chunk_timeout.as_secs(),
                    };
                    let small =
                        tokio::time::timeout(chunk_timeout, read_small(&tree, &mut conn, &op, &p))
                            .await
                            .map_err(timed_out)??;
                    if let Some(Small {
                        bytes,
                        opened,
                        after,
                    }) = small
                    {
                        note_change(&p, &opened, &after, bytes.len() as u64);
                        return Ok(Fetched {
                            md5: hash_error(&op, crate::hash::md5_hex(&bytes))?,
                            size: bytes.len() as u64,
                            after,
                            content: Content::Memory(bytes),
                        });
                    }
                    // Two deny-write handles: the download closes its own
                    // as the last chunk lands; the other, held through the
                    // read, is closed after it asking for the size and times
                    // (a QUERY_INFO on an open handle would not do: Samba
                    // reports the last-write time the file had when opened).
                    let request = deny_write_open(&p, FileAccessMask::FILE_READ_DATA);
                    let held =
                        tokio::time::timeout(chunk_timeout, open(&tree, &conn, &op, &request))
                            .await
                            .map_err(timed_out)??;
                    let read = stream(&tree, &mut conn, &op, &request, &dest, chunk_timeout).await;
                    let after = tokio::time::timeout(
                        chunk_timeout,
                        close_and_query(&tree, &conn, &op, &p, held.file_id),
                    )
                    .await
                    .map_err(timed_out);
                    let (md5, size, content) = read?;
                    let after = after??;
                    note_change(&p, &entry_of_open(&p, &held), &after, size);
                    Ok(Fetched {
                        md5,
                        size,
                        after,
                        content,
                    })
                }
                .boxed()
            },
        )
        .await
    }

    async fn mkdir_all(&self, dir: &str) -> Result<(), SourceError> {
        let d = dir.to_string();
        self.call(
            format!("mkdir {dir}"),
            Some(self.config.timeout),
            Retry::OnDisconnect,
            move |tree, mut conn| {
                let d = d.clone();
                async move {
                    match stat_entry(&tree, &mut conn, &d).await {
                        Ok(e) if e.is_dir => return Ok(()),
                        Ok(_) => {
                            return Err(SourceError::AlreadyExists(format!(
                                "{d} exists and is not a folder"
                            )));
                        }
                        Err(SourceError::NotFound(_)) => {}
                        Err(e) => return Err(e),
                    }
                    let mut cur = String::new();
                    for seg in d.split('/').filter(|s| !s.is_empty()) {
                        if !cur.is_empty() {
                            cur.push('/');
                        }
                        cur.push_str(seg);
                        match tree.create_directory(&mut conn, &cur).await {
                            Ok(()) => {}
                            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                                if !stat_entry(&tree, &mut conn, &cur).await?.is_dir {
                                    return Err(SourceError::AlreadyExists(format!(
                                        "{cur} exists and is not a folder"
                                    )));
                                }
                            }
                            Err(e) => return Err(classify(&format!("mkdir {cur}"), e)),
                        }
                    }
                    Ok(())
                }
                .boxed()
            },
        )
        .await
    }

    /// One CREATE (delete access, sharing read only) that returns the
    /// file's size and times, then SET_INFO rename with `ReplaceIfExists = 0`
    /// and CLOSE in one compound request: two round trips.
    async fn move_file(
        &self,
        from: &str,
        to: &str,
        expected: &Expected,
    ) -> Result<Moved, SourceError> {
        let (f, t, expected) = (from.to_string(), to.to_string(), expected.clone());
        self.call(
            format!("move {from} -> {to}"),
            Some(self.config.timeout),
            Retry::Never,
            move |tree, mut conn| {
                let (f, t, expected) = (f.clone(), t.clone(), expected.clone());
                async move {
                    let op = format!("move {f} -> {t}");
                    let opened = open(
                        &tree,
                        &conn,
                        &op,
                        &deny_write_open(&f, FileAccessMask::DELETE),
                    )
                    .await?;
                    let now = entry_of_open(&f, &opened);
                    if !expected.matches(&now) {
                        let _ = tree.close_handle(&mut conn, opened.file_id).await;
                        return Ok(Moved::Changed(now));
                    }
                    rename_and_close(&tree, &mut conn, &op, opened.file_id, &t).await?;
                    Ok(Moved::Done)
                }
                .boxed()
            },
        )
        .await
    }

    async fn connect(&self) -> Result<(), SourceError> {
        self.live().await.map(|_| ())
    }

    async fn server_now(&self) -> Result<DateTime<Utc>, SourceError> {
        let c = &self.config;
        let op = "server clock (NEGOTIATE)";
        match tokio::time::timeout(c.timeout, negotiate_clock(&c.host, c.port)).await {
            Ok(Ok(now)) => Ok(now),
            Ok(Err(message)) => Err(SourceError::Io {
                op: op.into(),
                message,
            }),
            Err(_) => Err(SourceError::Timeout {
                op: op.into(),
                secs: c.timeout.as_secs(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rename_info_never_replaces_and_names_the_target_in_utf16() {
        let b = rename_info("archive/ü.csv");
        assert_eq!(b[0], 0, "ReplaceIfExists must be FALSE");
        let name: Vec<u16> = "archive\\ü.csv".encode_utf16().collect();
        assert_eq!(
            u32::from_le_bytes(b[16..20].try_into().unwrap()) as usize,
            name.len() * 2
        );
        assert_eq!(b.len(), 20 + name.len() * 2);
    }

    #[test]
    fn server_times_keep_microseconds_only() {
        // 2024-01-01T00:00:00.1234567Z in 100 ns ticks since 1601.
        let t = FileTime(133_485_408_001_234_567);
        let utc = to_utc(t);
        assert_eq!(utc.timestamp_subsec_nanos(), 123_456_000);
        assert_eq!(utc.timestamp(), 1_704_067_200);
    }

    fn close_answer(flags: u16) -> CloseResponse {
        CloseResponse {
            flags,
            creation_time: FileTime(1),
            last_access_time: FileTime(2),
            last_write_time: FileTime(133_485_408_001_234_567),
            change_time: FileTime(133_485_408_009_000_000),
            allocation_size: 4096,
            end_of_file: 1234,
            file_attributes: 0x20,
        }
    }

    #[test]
    fn a_close_answer_gives_the_size_and_times_after_the_read() {
        let mut w = WriteCursor::new();
        close_answer(SMB2_CLOSE_FLAG_POSTQUERY_ATTRIB).pack(&mut w);
        let bytes = w.into_inner();
        let r = CloseResponse::unpack(&mut ReadCursor::new(&bytes)).unwrap();
        let e = entry_of_close("src/acme/f.csv", &r).unwrap();
        assert_eq!(e.name, "f.csv");
        assert!(!e.is_dir);
        assert_eq!(e.size, 1234);
        assert_eq!(e.mtime, to_utc(FileTime(133_485_408_001_234_567)));
        assert_eq!(e.ctime, to_utc(FileTime(133_485_408_009_000_000)));
    }

    #[test]
    fn a_close_answer_without_the_attributes_flag_says_nothing() {
        assert_eq!(entry_of_close("f.csv", &close_answer(0)), None);
    }

    #[test]
    fn the_clock_request_is_one_framed_negotiate_offering_smb_3_1_1() {
        let frame = negotiate_request();
        assert_eq!(frame[0], 0);
        let len = u32::from_be_bytes([0, frame[1], frame[2], frame[3]]) as usize;
        assert_eq!(len, frame.len() - 4);
        let mut c = ReadCursor::new(&frame[4..]);
        let h = Header::unpack(&mut c).unwrap();
        assert_eq!(h.command, Command::Negotiate);
        assert!(!h.is_response());
        let r = NegotiateRequest::unpack(&mut ReadCursor::new(&frame[4 + Header::SIZE..])).unwrap();
        assert!(r.dialects.contains(&Dialect::Smb3_1_1));
        assert!(
            r.negotiate_contexts
                .iter()
                .any(|c| matches!(c, NegotiateContext::PreauthIntegrity { .. }))
        );
    }

    fn negotiate_answer(status: NtStatus, system_time: u64) -> Vec<u8> {
        let mut h = Header::new_request(Command::Negotiate);
        h.flags.set_response();
        h.status = status;
        let r = NegotiateResponse {
            security_mode: SecurityMode::new(SecurityMode::SIGNING_ENABLED),
            dialect_revision: Dialect::Smb3_0_2,
            server_guid: Guid::ZERO,
            capabilities: Capabilities::new(0),
            max_transact_size: 1 << 20,
            max_read_size: 1 << 20,
            max_write_size: 1 << 20,
            system_time,
            server_start_time: 0,
            security_buffer: vec![],
            negotiate_contexts: vec![],
        };
        let mut w = WriteCursor::new();
        h.pack(&mut w);
        r.pack(&mut w);
        w.into_inner()
    }

    #[test]
    fn the_server_clock_is_the_negotiate_answers_system_time() {
        let t = 133_485_408_001_234_567;
        assert_eq!(
            negotiated_time(&negotiate_answer(NtStatus::SUCCESS, t)),
            Ok(FileTime(t))
        );
    }

    #[test]
    fn a_negotiate_answer_without_a_time_or_refused_gives_no_clock() {
        assert!(negotiated_time(&negotiate_answer(NtStatus::SUCCESS, 0)).is_err());
        assert!(
            negotiated_time(&negotiate_answer(
                NtStatus::ACCESS_DENIED,
                133_485_408_000_000_000
            ))
            .is_err()
        );
        assert!(negotiated_time(&[0u8; 10]).is_err());
    }

    #[test]
    fn debug_hides_the_password() {
        let c = SmbConfig {
            host: "h".into(),
            port: 445,
            share: "s".into(),
            username: "u".into(),
            password: "hunter2".into(),
            domain: String::new(),
            timeout: Duration::from_secs(1),
            signing: Signing::IfRequired,
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
