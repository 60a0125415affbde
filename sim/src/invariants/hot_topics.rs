//! Hot topic changes are refused only for the documented reasons: a valid split (2..=8
//! shards) or merge of a valid topic either succeeds or fails with FAILED_PRECONDITION
//! (another change of that topic is still uncommitted) or a transient error of a faulty
//! metastore (UNAVAILABLE, a timeout, a lost connection).
//!
//! Guards the metastore's hot topic API: argument checks, the room check and the mapping
//! of a rejection to a status code.

use std::time::Duration;

use tonic::{Code, Status};

use crate::oracle::Oracle;

pub const NAME: &str = "hot topic changes refused only for documented reasons";

/// Checks the error the metastore answered to a split into `shards` (0: a merge).
pub fn check_refusal(
    oracle: &mut Oracle,
    now: Duration,
    topic: &str,
    shards: u32,
    status: &Status,
) {
    let expected = matches!(
        status.code(),
        Code::FailedPrecondition
            | Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Cancelled
    );
    if !expected {
        oracle.violate(
            now,
            NAME,
            format!(
                "{topic} into {shards}: {:?}: {}",
                status.code(),
                status.message()
            ),
        );
    }
}
