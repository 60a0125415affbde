//! openraft's [`RaftStateMachine`] over a [`Backend`].
//!
//! ```text
//!  committed entries ──► apply ──► MetaState::apply ──► Delta{revision, changes}
//!                                        │                     │
//!                                        ▼                     ▼
//!                                 SmShared.inner        bounded history ──► watchers
//!                                                        (revision watch wakes them)
//! ```
//!
//! The state lives in memory and is made durable as snapshots in the backend; on restart
//! the node loads the latest snapshot and openraft re-applies the committed log after it
//! (the log store persists the committed id). The delta history is soft: a watcher whose
//! revision it no longer covers receives a full snapshot first.

use std::collections::VecDeque;
use std::io::Cursor;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use firetower_proto::metastore::v1 as pb;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftSnapshotBuilder, StorageIOError};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{keys, Backend};
use crate::error::BackendError;
use crate::metrics::StoreMetrics;
use crate::state::{MetaState, Response};
use crate::types::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

/// The applied state and what watchers need, shared between the state machine, the API
/// service and the lease driver.
pub struct SmShared {
    inner: RwLock<SmInner>,
    revision: watch::Sender<u64>,
    /// The most changes the delta history keeps. One rebalance can be 16k changes, so the
    /// bound counts changes, not deltas.
    history_max_changes: usize,
}

/// The applied state.
pub struct SmInner {
    /// The last log id applied (None before the first).
    pub last_applied: Option<LogId>,
    /// The membership as of `last_applied`.
    pub membership: StoredMembership,
    /// The routing state.
    pub state: MetaState,
    /// Recent deltas in revision order (consecutive revisions).
    history: VecDeque<pb::Delta>,
    /// How many changes `history` holds.
    history_changes: usize,
}

/// What a watcher at some revision gets next.
pub enum Catchup {
    /// The history covers the watcher: these deltas (possibly none) follow its revision.
    Deltas(Vec<pb::Delta>),
    /// The history does not reach back far enough: start over from this snapshot.
    Snapshot(Box<pb::SlotMap>),
}

impl SmInner {
    /// The deltas after `from`, or a snapshot when the history no longer has them.
    pub fn catch_up(&self, from: u64) -> Catchup {
        if from >= self.state.revision {
            return Catchup::Deltas(Vec::new());
        }
        match self.history.front() {
            Some(first) if first.revision <= from + 1 => Catchup::Deltas(
                self.history
                    .iter()
                    .filter(|d| d.revision > from)
                    .cloned()
                    .collect(),
            ),
            _ => Catchup::Snapshot(Box::new(self.state.to_proto())),
        }
    }
}

impl SmShared {
    /// Reads the applied state. Hold the guard briefly: apply waits for it.
    pub fn read(&self) -> RwLockReadGuard<'_, SmInner> {
        // A panic while holding the lock cannot leave the state half-applied in a way a
        // reader could observe differently from a writer, so poisoning is ignored.
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, SmInner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// A receiver that changes whenever the revision does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }
}

/// What a snapshot holds.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    state: MetaState,
}

/// The state machine of one node. Clones share the state.
#[derive(Clone)]
pub struct StateMachine<B: Backend> {
    shared: Arc<SmShared>,
    backend: B,
    /// Where each entry's apply time goes (none in tests of the storage alone).
    metrics: Option<Arc<StoreMetrics>>,
}

fn sm_read_err(e: impl Into<BackendError>) -> StorageError {
    StorageIOError::read_state_machine(&e.into()).into()
}

fn snapshot_write_err(e: impl Into<BackendError>) -> StorageError {
    StorageIOError::write_snapshot(None, &e.into()).into()
}

impl<B: Backend> StateMachine<B> {
    /// Opens the state machine, restoring the latest snapshot stored in `backend`.
    pub fn open(backend: B, history_max_changes: usize) -> Result<Self, BackendError> {
        let body = match backend.meta_get(keys::SNAPSHOT_DATA)? {
            Some(bytes) => serde_json::from_slice::<SnapshotBody>(&bytes)?,
            None => SnapshotBody {
                last_applied: None,
                membership: StoredMembership::default(),
                state: MetaState::default(),
            },
        };
        let (revision, _) = watch::channel(body.state.revision);
        let inner = SmInner {
            last_applied: body.last_applied,
            membership: body.membership,
            state: body.state,
            history: VecDeque::new(),
            history_changes: 0,
        };
        let shared = Arc::new(SmShared {
            inner: RwLock::new(inner),
            revision,
            history_max_changes,
        });
        Ok(StateMachine {
            shared,
            backend,
            metrics: None,
        })
    }

    /// The same state machine, timing each entry's apply into `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<StoreMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The shared view used by the API service.
    pub fn shared(&self) -> Arc<SmShared> {
        self.shared.clone()
    }

    fn stored_snapshot(&self) -> Result<Option<(SnapshotMeta, Vec<u8>)>, BackendError> {
        let meta = self.backend.meta_get(keys::SNAPSHOT_META)?;
        let data = self.backend.meta_get(keys::SNAPSHOT_DATA)?;
        match (meta, data) {
            (Some(meta), Some(data)) => Ok(Some((serde_json::from_slice(&meta)?, data))),
            _ => Ok(None),
        }
    }

    fn store_snapshot(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), BackendError> {
        // Data first: a crash between the writes leaves new data with old meta, which is only
        // ever read together with the data by `open` (the meta is informational there).
        self.backend.meta_put(keys::SNAPSHOT_DATA, data.to_vec())?;
        self.backend
            .meta_put(keys::SNAPSHOT_META, serde_json::to_vec(meta)?)?;
        self.backend.flush()
    }
}

impl<B: Backend> RaftSnapshotBuilder<TypeConfig> for StateMachine<B> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (meta, data) = {
            let inner = self.shared.read();
            let body = SnapshotBody {
                last_applied: inner.last_applied,
                membership: inner.membership.clone(),
                state: inner.state.clone(),
            };
            let data = serde_json::to_vec(&body).map_err(snapshot_write_err)?;
            let snapshot_id = match inner.last_applied {
                Some(id) => format!(
                    "{}-{}-{}",
                    id.leader_id.term, id.index, inner.state.revision
                ),
                None => format!("0-0-{}", inner.state.revision),
            };
            let meta = SnapshotMeta {
                last_log_id: inner.last_applied,
                last_membership: inner.membership.clone(),
                snapshot_id,
            };
            (meta, data)
        };
        self.store_snapshot(&meta, &data)
            .map_err(snapshot_write_err)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl<B: Backend> RaftStateMachine<TypeConfig> for StateMachine<B> {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let inner = self.shared.read();
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut responses = Vec::new();
        let revision = {
            let mut inner = self.shared.write();
            for entry in entries {
                inner.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => responses.push(Response {
                        revision: inner.state.revision,
                        ..Response::default()
                    }),
                    EntryPayload::Normal(command) => {
                        let started = tokio::time::Instant::now();
                        let (response, changes) = inner.state.apply(&command);
                        if let Some(metrics) = &self.metrics {
                            metrics.apply.observe(started.elapsed().as_secs_f64());
                        }
                        if !changes.is_empty() {
                            inner.history_changes += changes.len();
                            inner.history.push_back(pb::Delta {
                                revision: response.revision,
                                changes,
                            });
                            while inner.history_changes > self.shared.history_max_changes
                                && inner.history.len() > 1
                            {
                                if let Some(old) = inner.history.pop_front() {
                                    inner.history_changes -= old.changes.len();
                                }
                            }
                        }
                        responses.push(response);
                    }
                    EntryPayload::Membership(membership) => {
                        inner.membership = StoredMembership::new(Some(entry.log_id), membership);
                        responses.push(Response {
                            revision: inner.state.revision,
                            ..Response::default()
                        });
                    }
                }
            }
            inner.state.revision
        };
        self.shared.revision.send_replace(revision);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let body: SnapshotBody = serde_json::from_slice(&data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        self.store_snapshot(meta, &data)
            .map_err(snapshot_write_err)?;
        let revision = {
            let mut inner = self.shared.write();
            inner.last_applied = meta.last_log_id;
            inner.membership = meta.last_membership.clone();
            inner.state = body.state;
            // Watchers cannot be given the deltas this snapshot skipped: they resync.
            inner.history.clear();
            inner.history_changes = 0;
            inner.state.revision
        };
        self.shared.revision.send_replace(revision);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self
            .stored_snapshot()
            .map_err(sm_read_err)?
            .map(|(meta, data)| Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data)),
            }))
    }
}
