//! Limits no peer can exhaust: idle deadlines on streams, a bound on the
//! streams one peer may hold or wait with, and the byte budget that bounds
//! the memory of puts and gets.
//!
//! - [`IdleStream`] fails any read or write that makes no progress for the
//!   idle deadline, so a stalled client or peer can hold a stream permit
//!   for at most that long (the first frame has its own shorter deadline,
//!   see `node::spawn_servers`).
//! - [`PeerSlots`] counts the streams each peer has open or waiting for a
//!   permit; past its share a peer's new streams are closed at once, so
//!   one peer cannot queue up behind the global permits and starve others.
//! - [`MemoryBudget`] is a node-wide semaphore of bytes: a put reserves a
//!   segment's raw and parity bytes before reading it from the client and
//!   releases them when the segment is stored; a get reserves a segment's
//!   shards and decoded bytes before fetching it. The node's put and get
//!   buffers together therefore never exceed the budget, whatever the
//!   geometry; a geometry whose single segment would not fit is refused.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{AsyncRead, AsyncWrite, Future};
use libp2p::PeerId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A stream whose every read and write must make progress within `idle`.
pub struct IdleStream<S> {
    inner: S,
    idle: Duration,
    read_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    write_timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> std::fmt::Debug for IdleStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleStream")
            .field("idle", &self.idle)
            .finish_non_exhaustive()
    }
}

impl<S> IdleStream<S> {
    pub fn new(inner: S, idle: Duration) -> Self {
        IdleStream {
            inner,
            idle,
            read_timer: None,
            write_timer: None,
        }
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
}

/// Polls `timer` after the inner operation was pending: arms it on the
/// first pending poll, fails once it fires, disarms on progress.
fn check_idle<T>(
    timer: &mut Option<Pin<Box<tokio::time::Sleep>>>,
    idle: Duration,
    cx: &mut Context<'_>,
    r: Poll<io::Result<T>>,
    what: &str,
) -> Poll<io::Result<T>> {
    match r {
        Poll::Ready(v) => {
            *timer = None;
            Poll::Ready(v)
        }
        Poll::Pending => {
            let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
            match t.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    *timer = None;
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no {what} progress for {idle:?}"),
                    )))
                }
                Poll::Pending => Poll::Pending,
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        check_idle(&mut this.read_timer, this.idle, cx, r, "read")
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        check_idle(&mut this.write_timer, this.idle, cx, r, "write")
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        check_idle(&mut this.write_timer, this.idle, cx, r, "write")
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_close(cx);
        check_idle(&mut this.write_timer, this.idle, cx, r, "write")
    }
}

/// Streams per peer, open or waiting for a permit.
#[derive(Debug, Clone)]
pub struct PeerSlots {
    per_peer: usize,
    held: Arc<Mutex<HashMap<PeerId, usize>>>,
}

/// One peer's stream slot; freed when dropped.
#[derive(Debug)]
pub struct PeerSlot {
    peer: PeerId,
    held: Arc<Mutex<HashMap<PeerId, usize>>>,
}

impl PeerSlots {
    pub fn new(per_peer: usize) -> Self {
        PeerSlots {
            per_peer,
            held: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A slot for `peer`, or `None` when it already holds its share.
    pub fn try_take(&self, peer: PeerId) -> Option<PeerSlot> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry(peer).or_insert(0);
        if *n >= self.per_peer {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            peer,
            held: self.held.clone(),
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.peer);
            }
        }
    }
}

/// The node-wide byte budget of put and get buffers, in MiB units.
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    mib: u32,
    sem: Arc<Semaphore>,
}

/// Bytes reserved from a [`MemoryBudget`]; returned when dropped.
#[derive(Debug)]
pub struct Reservation(#[allow(dead_code)] OwnedSemaphorePermit);

impl MemoryBudget {
    pub fn new(bytes: u64) -> Self {
        let mib = u32::try_from(bytes >> 20).unwrap_or(u32::MAX).max(1);
        MemoryBudget {
            mib,
            sem: Arc::new(Semaphore::new(mib as usize)),
        }
    }

    pub fn bytes(&self) -> u64 {
        u64::from(self.mib) << 20
    }

    /// Whether a single reservation of `bytes` can ever be granted.
    pub fn fits(&self, bytes: u64) -> bool {
        Self::units(bytes) <= self.mib
    }

    fn units(bytes: u64) -> u32 {
        u32::try_from(bytes.div_ceil(1 << 20))
            .unwrap_or(u32::MAX)
            .max(1)
    }

    /// Waits until `bytes` are free and reserves them. Callers check
    /// [`MemoryBudget::fits`] first; a larger request is cut to the whole
    /// budget rather than waiting forever.
    pub async fn reserve(&self, bytes: u64) -> Reservation {
        let units = Self::units(bytes).min(self.mib);
        let permit = self
            .sem
            .clone()
            .acquire_many_owned(units)
            .await
            .expect("the budget's semaphore is never closed");
        Reservation(permit)
    }

    /// Reserves `bytes` if they are free now (cut to the whole budget like
    /// [`MemoryBudget::reserve`]). A caller that already holds reservations
    /// which only it can release must use this, not wait: two such callers
    /// waiting for each other's bytes would wait forever.
    pub fn try_reserve(&self, bytes: u64) -> Option<Reservation> {
        let units = Self::units(bytes).min(self.mib);
        self.sem
            .clone()
            .try_acquire_many_owned(units)
            .ok()
            .map(Reservation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::AsyncReadExt;

    #[tokio::test]
    async fn a_stalled_read_fails_after_the_idle_deadline_and_progress_resets_it() {
        use futures::{SinkExt, StreamExt, TryStreamExt};
        let (mut tx, rx) = futures::channel::mpsc::channel::<Vec<u8>>(4);
        let inner = rx.map(Ok::<_, io::Error>).into_async_read();
        let mut reader = IdleStream::new(inner, Duration::from_millis(200));
        // Progress every 100 ms for 500 ms: never idle for 200 ms.
        let feeder = tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                tx.send(b"x".to_vec()).await.unwrap();
            }
            tx // then stall, keeping the stream open
        });
        let mut buf = [0u8; 5];
        reader.read_exact(&mut buf).await.unwrap();
        let _tx = feeder.await.unwrap();
        let e = reader.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn a_peer_gets_its_share_of_slots_and_no_more() {
        let slots = PeerSlots::new(2);
        let p = PeerId::random();
        let q = PeerId::random();
        let a = slots.try_take(p).unwrap();
        let _b = slots.try_take(p).unwrap();
        assert!(slots.try_take(p).is_none());
        assert!(slots.try_take(q).is_some());
        drop(a);
        assert!(slots.try_take(p).is_some());
    }

    #[tokio::test]
    async fn reservations_wait_for_the_budget() {
        let b = MemoryBudget::new(4 << 20);
        assert!(b.fits(4 << 20) && !b.fits((4 << 20) + 1));
        let r = b.reserve(3 << 20).await;
        let waiting = tokio::time::timeout(Duration::from_millis(50), b.reserve(2 << 20)).await;
        assert!(waiting.is_err(), "reserved past the budget");
        drop(r);
        tokio::time::timeout(Duration::from_secs(5), b.reserve(2 << 20))
            .await
            .expect("freed bytes are reserved again");
    }

    #[test]
    fn try_reserve_takes_only_free_bytes() {
        let b = MemoryBudget::new(4 << 20);
        let r = b.try_reserve(3 << 20).expect("free");
        assert!(b.try_reserve(2 << 20).is_none(), "reserved past the budget");
        assert!(b.try_reserve(1 << 20).is_some());
        drop(r);
        assert!(b.try_reserve(9 << 20).is_some(), "cut to the whole budget");
    }
}
