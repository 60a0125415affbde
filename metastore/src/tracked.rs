//! Knowing when everything a node started is gone: its tasks, its storage handles and its
//! connections. [`crate::node::run`] returns only then, so that a node stopped and started
//! again in the same process (the simulator's crash and restart, `firetower dev`, tests)
//! finds its data dir free.
//!
//! A node's tasks are not all its own. It spawns the initializer, the lease driver and one
//! task per watch stream; openraft spawns RaftCore, the tick, the state-machine worker, one
//! task per replication stream, snapshot builds and RPCs, all through
//! [`SeededRuntime`](crate::runtime::SeededRuntime). `Raft::shutdown` joins only RaftCore
//! and the tick: the state-machine worker and the replication streams notice the core is
//! gone and end later, on their own, holding the state machine and the log store — and so
//! the sled database — until then. hyper serves each request in a task of its own, holding
//! the services (and through them the storage) while it runs.
//!
//! - [`Tracker`] and [`Token`]: a count of holders. Every [`Token`] clone is one;
//!   [`Tracker::released`] resolves once none is left.
//! - [`Tasks`]: spawns tasks that hold a token until their future is dropped, and makes
//!   itself current in them (a task-local), so that whatever openraft spawns from inside
//!   them — or from inside [`Tasks::scope`] — is tracked too. Once no [`Tasks`] handle is
//!   left, no task of the node runs and none can start.
//! - [`Held`]: the storage backend as the node's parts hold it; each clone is a token, so
//!   the node can wait until its own handle is the last one.
//! - [`Severable`]: an accepted connection that can be cut when a graceful close does not
//!   finish (a client that stops reading its watch stream would otherwise hold it open),
//!   and [`Signal`], the one-time event that cuts it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::channel::oneshot;
use futures::future::{FutureExt, Shared};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::server::Connected;

use crate::error::BackendError;
use crate::store::Backend;

/// Waits for the holders of its [`Token`]s.
pub(crate) struct Tracker {
    /// The receivers are the tokens: `closed` resolves when the last one is dropped.
    holders: watch::Sender<()>,
}

/// One holder counted by a [`Tracker`].
#[derive(Clone)]
pub(crate) struct Token {
    _holder: watch::Receiver<()>,
}

impl Tracker {
    /// A tracker and its first token.
    pub(crate) fn new() -> (Tracker, Token) {
        let (holders, holder) = watch::channel(());
        (Tracker { holders }, Token { _holder: holder })
    }

    /// How many tokens are left.
    pub(crate) fn holders(&self) -> usize {
        self.holders.receiver_count()
    }

    /// Resolves once every token has been dropped.
    pub(crate) async fn released(&self) {
        self.holders.closed().await
    }
}

tokio::task_local! {
    /// The node whose task is running, if it is one: openraft's spawns join it.
    static CURRENT: Tasks;
}

/// Spawns the tasks of one node, which its [`Tracker`] waits for.
#[derive(Clone)]
pub(crate) struct Tasks {
    token: Token,
}

impl Tasks {
    /// A handle over `token` (of the tracker that waits for the node's tasks).
    pub(crate) fn new(token: Token) -> Tasks {
        Tasks { token }
    }

    /// Spawns `future` as a task of this node: the task holds a token until the future is
    /// dropped, and what it spawns through [`spawn`] is a task of this node too.
    pub(crate) fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        tokio::spawn(Tracked {
            future: Box::pin(CURRENT.scope(self.clone(), future)),
            _token: self.token.clone(),
        })
    }

    /// Runs `future` with this node current, so that tasks it spawns through [`spawn`] are
    /// the node's (openraft's `Raft::new` spawns RaftCore, the tick and the state-machine
    /// worker).
    pub(crate) async fn scope<F: Future>(&self, future: F) -> F::Output {
        CURRENT.scope(self.clone(), future).await
    }
}

/// Spawns a task of the current node if there is one, else a plain tokio task. openraft
/// spawns through this (see [`crate::runtime`]).
pub(crate) fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match CURRENT.try_with(Tasks::clone) {
        Ok(tasks) => tasks.spawn(future),
        Err(_) => tokio::spawn(future),
    }
}

/// A future and the token it holds. Fields drop in order: the future (and everything it
/// owns) first, then the token.
struct Tracked<F> {
    future: Pin<Box<F>>,
    _token: Token,
}

impl<F: Future> Future for Tracked<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.future.as_mut().poll(cx)
    }
}

/// A storage backend and a token: while a clone exists, the node has not let go of its
/// storage.
#[derive(Clone)]
pub(crate) struct Held<B> {
    backend: B,
    _token: Token,
}

impl<B: Backend> Held<B> {
    /// `backend`, counted by the tracker of `token`.
    pub(crate) fn new(backend: B, token: Token) -> Self {
        Held {
            backend,
            _token: token,
        }
    }
}

impl<B: Backend> Backend for Held<B> {
    fn log_range(&self, start: u64, end: u64) -> Result<Vec<(u64, Vec<u8>)>, BackendError> {
        self.backend.log_range(start, end)
    }

    fn log_last(&self) -> Result<Option<(u64, Vec<u8>)>, BackendError> {
        self.backend.log_last()
    }

    fn log_insert(&self, entries: Vec<(u64, Vec<u8>)>) -> Result<(), BackendError> {
        self.backend.log_insert(entries)
    }

    fn log_remove_from(&self, from: u64) -> Result<(), BackendError> {
        self.backend.log_remove_from(from)
    }

    fn log_remove_upto(&self, upto: u64) -> Result<(), BackendError> {
        self.backend.log_remove_upto(upto)
    }

    fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        self.backend.meta_get(key)
    }

    fn meta_put(&self, key: &str, value: Vec<u8>) -> Result<(), BackendError> {
        self.backend.meta_put(key, value)
    }

    fn flush(&self) -> Result<(), BackendError> {
        self.backend.flush()
    }
}

/// Fires its [`Signal`] when sent to or dropped.
pub(crate) type Trigger = oneshot::Sender<()>;

/// A one-time event as a plain future, cloned for each party that waits for it. Unlike a
/// tokio `watch`, polling it does not spend tokio's cooperative budget, so it can be
/// checked on every read and write (or every poll of the server) without changing when
/// tasks yield — and with it the simulator's schedules.
pub(crate) type Signal = Shared<oneshot::Receiver<()>>;

/// A trigger and its signal.
pub(crate) fn signal() -> (Trigger, Signal) {
    let (trigger, signal) = oneshot::channel();
    (trigger, signal.shared())
}

/// An accepted connection that fails every read and write once its node cuts it.
pub(crate) struct Severable<IO> {
    io: IO,
    cut: Signal,
}

impl<IO> Severable<IO> {
    /// `io`, cut when `cut` fires.
    pub(crate) fn new(io: IO, cut: Signal) -> Self {
        Severable { io, cut }
    }

    /// An error once the connection is cut; registers the waker otherwise, so that a
    /// connection waiting to read or write wakes up when it is cut.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.cut.poll_unpin(cx) {
            Poll::Ready(_) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the metastore node is stopping",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl<IO: Connected> Connected for Severable<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Severable<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Severable<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A cut connection is closed by dropping it: there is nothing left to shut down.
        if self.check(cx).is_err() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::oneshot;
    use tokio::time::timeout;

    use super::*;
    use crate::store::MemBackend;

    /// What a node task spawns through [`spawn`] (as openraft does from RaftCore) is waited
    /// for too, after the handle and the spawning task are gone.
    #[tokio::test]
    async fn tasks_spawned_inside_a_node_task_are_waited_for() {
        let (tracker, token) = Tracker::new();
        let tasks = Tasks::new(token);
        let (release, released) = oneshot::channel::<()>();
        tasks
            .spawn(async move {
                spawn(async move {
                    let _ = released.await;
                });
            })
            .await
            .expect("spawner");
        drop(tasks);
        assert!(
            timeout(Duration::from_millis(50), tracker.released())
                .await
                .is_err(),
            "the nested task still runs"
        );
        release.send(()).expect("nested task waiting");
        timeout(Duration::from_secs(5), tracker.released())
            .await
            .expect("released once the nested task ended");
    }

    /// Outside any node, [`spawn`] is a plain tokio task: nothing waits for it.
    #[tokio::test]
    async fn spawns_outside_a_node_are_not_tracked() {
        let (tracker, token) = Tracker::new();
        let tasks = Tasks::new(token);
        let (_release, released) = oneshot::channel::<()>();
        let outside = spawn(async move {
            let _ = released.await;
        });
        drop(tasks);
        timeout(Duration::from_secs(5), tracker.released())
            .await
            .expect("nothing of the node left");
        outside.abort();
    }

    /// Every clone of a [`Held`] backend counts until dropped.
    #[tokio::test]
    async fn held_storage_is_released_with_its_last_clone() {
        let (tracker, token) = Tracker::new();
        let held = Held::new(MemBackend::default(), token);
        let clone = held.clone();
        drop(held);
        assert_eq!(tracker.holders(), 1);
        clone.meta_put("k", vec![1]).expect("put");
        drop(clone);
        timeout(Duration::from_secs(5), tracker.released())
            .await
            .expect("released");
    }
}
