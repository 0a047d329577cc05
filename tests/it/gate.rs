//! A share wrapper that pauses the coordinator at a chosen step, so a race
//! is a deterministic test rather than timing luck.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use coordinator::source::{Entry, Expected, Fetched, FileSource, Moved, SourceError};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

/// Where a [`Gate`] holds the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// Before listing this folder.
    BeforeList,
    /// After listing this folder, before the caller sees the listing.
    AfterList,
    /// Before downloading this path (after both looks).
    BeforeFetch,
    /// Before moving this path (each attempt at an archive name is one move).
    BeforeMove,
}

/// A share that holds one call at one point until told to go on, so a test
/// can change the share exactly between two of the coordinator's steps.
pub struct Gate {
    inner: Arc<dyn FileSource>,
    at: Point,
    path: String,
    /// Matching calls still to let through before the one held.
    skip: AtomicUsize,
    armed: AtomicBool,
    reached: Notify,
    /// Notify once to let the held call go on.
    pub go: Notify,
    /// Listings of `path` still to fail as a timeout would.
    fail_lists: AtomicUsize,
}

impl Gate {
    /// Holds the first call at `at` for `path`.
    pub fn new(inner: Arc<dyn FileSource>, at: Point, path: &str) -> Arc<Gate> {
        Self::nth(inner, at, path, 0)
    }

    /// Holds the call at `at` for `path` after letting `skip` through.
    pub fn nth(inner: Arc<dyn FileSource>, at: Point, path: &str, skip: usize) -> Arc<Gate> {
        Arc::new(Gate {
            inner,
            at,
            path: path.to_string(),
            skip: AtomicUsize::new(skip),
            armed: AtomicBool::new(true),
            reached: Notify::new(),
            go: Notify::new(),
            fail_lists: AtomicUsize::new(0),
        })
    }

    /// Holds nothing, but fails the next `times` listings of `dir` as a
    /// timeout would, so a fault that is rare on a healthy server is a
    /// deterministic test; every other call goes to the real share.
    pub fn failing_list(inner: Arc<dyn FileSource>, dir: &str, times: usize) -> Arc<Gate> {
        let gate = Self::new(inner, Point::BeforeList, dir);
        gate.armed.store(false, Ordering::SeqCst);
        gate.fail_lists.store(times, Ordering::SeqCst);
        gate
    }

    async fn hold(&self, at: Point, path: &str) {
        if at != self.at || path != self.path {
            return;
        }
        let skipped = self
            .skip
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if !skipped && self.armed.swap(false, Ordering::SeqCst) {
            self.reached.notify_one();
            self.go.notified().await;
        }
    }

    /// Waits until a caller is held (bounded, so a broken test fails).
    pub async fn wait_reached(&self) {
        tokio::time::timeout(Duration::from_secs(60), self.reached.notified())
            .await
            .expect("the gate was never reached");
    }
}

#[async_trait]
impl FileSource for Gate {
    async fn list(&self, dir: &str) -> Result<Vec<Entry>, SourceError> {
        let fail = dir == self.path
            && self
                .fail_lists
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        if fail {
            return Err(SourceError::Timeout {
                op: format!("list {dir}"),
                secs: 30,
            });
        }
        self.hold(Point::BeforeList, dir).await;
        let r = self.inner.list(dir).await;
        self.hold(Point::AfterList, dir).await;
        r
    }
    async fn stat(&self, path: &str) -> Result<Entry, SourceError> {
        self.inner.stat(path).await
    }
    async fn fetch(&self, path: &str, dest: &Path) -> Result<Fetched, SourceError> {
        self.hold(Point::BeforeFetch, path).await;
        self.inner.fetch(path, dest).await
    }
    async fn mkdir_all(&self, dir: &str) -> Result<(), SourceError> {
        self.inner.mkdir_all(dir).await
    }
    async fn move_file(
        &self,
        from: &str,
        to: &str,
        expected: &Expected,
    ) -> Result<Moved, SourceError> {
        self.hold(Point::BeforeMove, from).await;
        self.inner.move_file(from, to, expected).await
    }
    async fn server_now(&self) -> Result<DateTime<Utc>, SourceError> {
        self.inner.server_now().await
    }
}
