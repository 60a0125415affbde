//! The invariants, one file each. The first six are checked on every delivery (in
//! [`crate::oracle::Oracle::delivery`]); the others at the end of each quiet phase (and
//! [`hot_topics`] on every refused split or merge).

pub mod as_published;
pub mod duplicates;
pub mod order;
pub mod publisher_order;
pub mod recovery;
pub mod subscribed;

pub mod completeness;
pub mod convergence;
pub mod hot_topics;
pub mod ownership;
pub mod progress;
pub mod topic_status;
