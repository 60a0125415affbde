//! Tasks a node spawns and must see end before its `run` returns.
//!
//! A node's `run` returns only after every task it spawned has ended and dropped what it
//! held (sockets, streams, queues, storage), so a stop followed by a start in the same
//! process (tests, `dev`, the simulator's crash and restart) never races with a task of the
//! previous run. The distributor and the edge spawn through [`Tasks`].
//!
//! Each task holds a token while it lives; [`Tasks::shutdown`] waits until no token is
//! left, and past its deadline tells the stragglers to stop, which they do at their next
//! await (the task's future is then dropped, its sockets with it). Not a `JoinSet`: a
//! finished task's memory stays in a `JoinSet` until someone joins it, and the edge spawns
//! a task per connection for as long as it runs.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{watch, Notify};
use tokio::time::Instant;

struct Inner {
    /// Tasks spawned and not yet dropped.
    live: AtomicUsize,
    /// Notified when `live` falls to zero.
    idle: Notify,
    /// Set once the shutdown deadline has passed: every task stops where it is.
    abort: watch::Sender<bool>,
}

/// Held by a task for as long as it lives.
struct Token(Arc<Inner>);

pin_project_lite::pin_project! {
    /// A task that ends when it ends or when its node aborts. Fields drop in order: the
    /// task's future (and everything it held) is gone before the token.
    struct Tracked<T, A> {
        #[pin]
        task: T,
        #[pin]
        abort: A,
        _token: Token,
    }
}

/// `task`, ended early when `abort` turns true. A struct, not an `async move` block around a
/// `select!`: such a block holds the task's future twice (the captured value and the moved
/// one), and the edge spawns a task per connection: an idle connection took twice its room.
fn tracked<T: Future<Output = ()>>(
    task: T,
    mut abort: watch::Receiver<bool>,
    token: Token,
) -> Tracked<T, impl Future<Output = ()>> {
    Tracked {
        task,
        abort: async move {
            let _ = abort.wait_for(|a| *a).await;
        },
        _token: token,
    }
}

impl<T: Future<Output = ()>, A: Future<Output = ()>> Future for Tracked<T, A> {
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let this = self.project();
        if this.task.poll(cx).is_ready() {
            return std::task::Poll::Ready(());
        }
        this.abort.poll(cx)
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// A node's tasks.
#[derive(Clone)]
pub struct Tasks {
    inner: Arc<Inner>,
}

impl Default for Tasks {
    fn default() -> Self {
        Self::new()
    }
}

impl Tasks {
    pub fn new() -> Self {
        Tasks {
            inner: Arc::new(Inner {
                live: AtomicUsize::new(0),
                idle: Notify::new(),
                abort: watch::channel(false).0,
            }),
        }
    }

    /// Spawns a tracked task.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.inner.live.fetch_add(1, Ordering::AcqRel);
        let token = Token(self.inner.clone());
        tokio::spawn(tracked(task, self.inner.abort.subscribe(), token));
    }

    /// How many tracked tasks are alive.
    pub fn live(&self) -> usize {
        self.inner.live.load(Ordering::Acquire)
    }

    /// Waits until every task has ended (tasks spawned meanwhile included). At `deadline`
    /// the remaining ones are stopped where they are, and waited for.
    pub async fn shutdown(&self, deadline: Instant) {
        if tokio::time::timeout_at(deadline, self.idle())
            .await
            .is_err()
        {
            tracing::debug!(
                tasks = self.live(),
                "tasks still running at the shutdown deadline; stopping them"
            );
            self.inner.abort.send_replace(true);
            self.idle().await;
        }
    }

    async fn idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            tokio::pin!(notified);
            // Registered before the check, so a drop to zero in between is not missed.
            notified.as_mut().enable();
            if self.live() == 0 {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_tracked_task_takes_its_futures_room_once() {
        let tasks = Tasks::new();
        let big = async {
            let buffer = [7u8; 4096];
            std::future::pending::<()>().await;
            std::hint::black_box(&buffer);
        };
        let own = std::mem::size_of_val(&big);
        let wrapped = tracked(
            big,
            tasks.inner.abort.subscribe(),
            Token(tasks.inner.clone()),
        );
        // The task, the abort wait (a receiver and its `wait_for`), the token.
        assert!(
            std::mem::size_of_val(&wrapped) < own + 512,
            "{} for a future of {own}",
            std::mem::size_of_val(&wrapped)
        );
    }

    #[tokio::test]
    async fn shutdown_waits_for_every_task_and_stops_stragglers_at_the_deadline() {
        let tasks = Tasks::new();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        // One that ends by itself after 1 s and spawns another on its way out.
        let inner = tasks.clone();
        tasks.spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            inner.spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = done_tx.send(());
            });
        });
        // One that would never end, holding a resource whose drop we can see.
        let (held_tx, mut held_rx) = tokio::sync::mpsc::channel::<()>(1);
        tasks.spawn(async move {
            let _held = held_tx;
            std::future::pending::<()>().await;
        });
        assert_eq!(tasks.live(), 2);
        let start = Instant::now();
        tasks.shutdown(start + Duration::from_millis(300)).await;
        assert_eq!(tasks.live(), 0);
        assert!(start.elapsed() >= Duration::from_millis(300));
        assert!(
            done_rx.await.is_ok(),
            "the task spawned late ran to its end"
        );
        assert!(
            held_rx.recv().await.is_none(),
            "the straggler dropped what it held"
        );
    }
}
