//! Tasks a node spawns and must see end before its `run` returns.
//!
//! A node's `run` returns only after every task it spawned has ended and released what it
//! held (sockets, storage), so a stop followed by a start in the same process (tests, `dev`,
//! the simulator's crash and restart) never races with a task of the previous run.
//! [`Tasks`] counts the tasks spawned through it; [`Tasks::wait_idle`] waits until none is
//! left. Unlike a `JoinSet` it keeps nothing of a task that has ended, so a long-lived node
//! that spawns a task per connection or per forward does not accumulate anything.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;

/// A counter of running tasks.
#[derive(Clone, Debug)]
pub struct Tasks {
    running: Arc<watch::Sender<usize>>,
}

impl Default for Tasks {
    fn default() -> Self {
        Tasks {
            running: Arc::new(watch::channel(0).0),
        }
    }
}

/// Held by a running task; its drop (the task ended, or was aborted) counts it out.
struct Running(Arc<watch::Sender<usize>>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Tasks {
    /// Spawns `task` on the current runtime, counted until it ends.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.running.send_modify(|n| *n += 1);
        let running = Running(self.running.clone());
        tokio::spawn(async move {
            let _running = running;
            task.await;
        });
    }

    /// Tasks still running.
    pub fn running(&self) -> usize {
        *self.running.borrow()
    }

    /// Waits until every task spawned through this has ended.
    pub async fn wait_idle(&self) {
        let mut running = self.running.subscribe();
        let _ = running.wait_for(|n| *n == 0).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_every_task_and_keeps_nothing_of_ended_ones() {
        let tasks = Tasks::default();
        let (release, released) = watch::channel(false);
        for _ in 0..3 {
            let mut released = released.clone();
            tasks.spawn(async move {
                let _ = released.wait_for(|r| *r).await;
            });
        }
        assert_eq!(tasks.running(), 3);
        let idle = tokio::spawn({
            let tasks = tasks.clone();
            async move { tasks.wait_idle().await }
        });
        tokio::task::yield_now().await;
        assert!(!idle.is_finished());
        let _ = release.send(true);
        let _ = idle.await;
        assert_eq!(tasks.running(), 0);
    }
}
