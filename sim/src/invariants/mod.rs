//! The invariants, one file each. The first three are checked on every delivery (in
//! [`crate::oracle::Oracle::delivery`]); the others at the end of each quiet phase (and
//! [`hot_topics`] on every refused split or merge).

pub mod completeness;
pub mod convergence;
pub mod duplicates;
pub mod hot_topics;
pub mod order;
pub mod ownership;
pub mod subscribed;
pub mod topic_status;
