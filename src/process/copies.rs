//! The order of possible copies within one run (CONTRACT §12, `hold`): of
//! two copies the first by copy order is processed, so a member of a class
//! of possible copies (one remitter, one size; see
//! [`crate::plan::duplicates::order_copies`]) claims only once every
//! earlier member is read and, if it has the same bytes, claimed. Then the
//! claim's content guard names the earlier one as the owner. Downloads and
//! claims of members with other bytes still run side by side.
//!
//! Members taken by this instance are followed in memory (no round trip);
//! earlier members held by other instances through the run's work rows,
//! polled until they are done. Earlier members not held by anyone (given
//! back by a draining instance) are not waited for: a member waiting for a
//! candidate that would need its own place could wait forever.

use crate::plan::duplicates::CopyPlace;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Where a member is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Slot {
    /// Not read yet.
    Reading,
    /// Read, with this MD5; its claim not made yet.
    Read(String),
    /// Claimed, or ended without a claim: it owns whatever it will own.
    Done,
}

/// The members of the run's classes taken by this instance (one per
/// taking of a run's candidates).
#[derive(Debug, Default)]
pub struct CopyOrder {
    classes: Mutex<HashMap<String, Class>>,
}

/// One class as this instance took it.
#[derive(Debug, Default)]
struct Class {
    /// Members not done when last looked at (a done one is dropped, so a
    /// class of thousands costs its members in flight, not its length).
    live: BTreeMap<i32, watch::Receiver<Slot>>,
    /// Every position taken here.
    taken: HashSet<i32>,
    /// The first position not taken here: all before it were.
    contiguous: i32,
}

/// A member's turn: publish its MD5, wait for the earlier members, and
/// (dropped after the claim) let the later ones go.
#[derive(Debug)]
pub struct CopyTicket {
    place: CopyPlace,
    me: watch::Sender<Slot>,
    /// Earlier members taken here before this one (ahead of it in the queue).
    earlier: Vec<watch::Receiver<Slot>>,
    /// Every earlier position was taken here: no other instance holds one.
    all_here: bool,
}

impl CopyOrder {
    /// Registers a member as it is taken, in take order.
    pub fn take(&self, place: &CopyPlace) -> CopyTicket {
        let (me, rx) = watch::channel(Slot::Reading);
        let mut classes = self.classes.lock().unwrap_or_else(|e| e.into_inner());
        let class = classes.entry(place.class.clone()).or_default();
        class.live.retain(|_, r| *r.borrow() != Slot::Done);
        let earlier: Vec<_> = class
            .live
            .range(..place.pos)
            .map(|(_, r)| r.clone())
            .collect();
        let all_here = class.contiguous >= place.pos;
        class.live.insert(place.pos, rx);
        class.taken.insert(place.pos);
        while class.taken.contains(&class.contiguous) {
            class.contiguous += 1;
        }
        CopyTicket {
            place: place.clone(),
            me,
            earlier,
            all_here,
        }
    }
}

impl CopyTicket {
    /// The member's place.
    pub fn place(&self) -> &CopyPlace {
        &self.place
    }

    /// This member was read with `md5`: earlier ones, and later ones with
    /// other bytes, need not wait for its claim.
    pub fn read(&self, md5: &str) {
        self.me.send_replace(Slot::Read(md5.to_string()));
    }

    /// Waits until every earlier member here is read, and claimed if it has
    /// `md5`; then, when some earlier position is not here, until
    /// `elsewhere()` (the earlier members other instances hold, not done)
    /// answers 0. An error of `elsewhere` is retried: claiming before an
    /// earlier copy could send the wrong one. Returns early on `stop`.
    pub async fn wait_turn<F, Fut, E>(&self, md5: &str, elsewhere: F, stop: &CancellationToken)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<i64, E>>,
        E: std::fmt::Display,
    {
        for rx in &self.earlier {
            let mut rx = rx.clone();
            let turn = rx.wait_for(|s| match s {
                Slot::Reading => false,
                Slot::Read(m) => m != md5,
                Slot::Done => true,
            });
            tokio::select! {
                // A closed channel: the member's ticket is gone, so is its claim.
                _ = turn => {}
                () = stop.cancelled() => return,
            }
        }
        if self.all_here {
            return;
        }
        let mut pause = Duration::from_millis(10);
        loop {
            match elsewhere().await {
                Ok(0) => return,
                Ok(n) => {
                    tracing::debug!(earlier = n, class = %self.place.class, "waiting for earlier possible copies on other instances")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not look for earlier copies; trying again")
                }
            }
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = stop.cancelled() => return,
            }
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }
}

impl Drop for CopyTicket {
    fn drop(&mut self) {
        self.me.send_replace(Slot::Done);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn place(pos: i32) -> CopyPlace {
        CopyPlace {
            class: "acme/10".into(),
            pos,
        }
    }

    async fn none_elsewhere() -> Result<i64, String> {
        Ok(0)
    }

    /// Polls `f` until it is true (a deadline instead of a sleep).
    async fn eventually(f: impl Fn() -> bool) {
        tokio::time::timeout(Duration::from_secs(5), async {
            while !f() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("in time");
    }

    #[tokio::test]
    async fn a_later_copy_waits_for_the_earlier_ones_claim() {
        let order = CopyOrder::default();
        let first = order.take(&place(0));
        let second = order.take(&place(1));
        let stop = CancellationToken::new();
        let passed = Arc::new(AtomicUsize::new(0));
        let waiter = {
            let passed = passed.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                second.read("m");
                second.wait_turn("m", none_elsewhere, &stop).await;
                passed.store(1, Ordering::SeqCst);
                second
            })
        };
        // The first is read with the same bytes: still not its turn.
        first.read("m");
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(passed.load(Ordering::SeqCst), 0);
        drop(first); // claimed
        eventually(|| passed.load(Ordering::SeqCst) == 1).await;
        waiter.await.unwrap();
    }

    #[tokio::test]
    async fn other_bytes_need_not_wait_for_the_claim() {
        let order = CopyOrder::default();
        let first = order.take(&place(0));
        let second = order.take(&place(1));
        first.read("m1");
        let stop = CancellationToken::new();
        tokio::time::timeout(
            Duration::from_secs(5),
            second.wait_turn("m2", none_elsewhere, &stop),
        )
        .await
        .expect("no wait for another content's claim");
        drop(first);
    }

    #[tokio::test]
    async fn earlier_members_elsewhere_are_polled_until_done() {
        let order = CopyOrder::default();
        // Position 0 is held by another instance: only 1 was taken here.
        let second = order.take(&place(1));
        let asked = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let a = asked.clone();
        second
            .wait_turn(
                "m",
                move || {
                    let n = a.fetch_add(1, Ordering::SeqCst);
                    async move { if n < 2 { Ok::<i64, String>(1) } else { Ok(0) } }
                },
                &stop,
            )
            .await;
        assert_eq!(asked.load(Ordering::SeqCst), 3);
        // The first position here: nothing to ask.
        let order = CopyOrder::default();
        let first = order.take(&place(0));
        first
            .wait_turn(
                "m",
                || async { Err::<i64, String>("never asked".into()) },
                &stop,
            )
            .await;
    }

    #[tokio::test]
    async fn a_stop_ends_the_wait() {
        let order = CopyOrder::default();
        let first = order.take(&place(0));
        let second = order.take(&place(1));
        let stop = CancellationToken::new();
        stop.cancel();
        second.wait_turn("m", none_elsewhere, &stop).await;
        drop(first);
    }
}
