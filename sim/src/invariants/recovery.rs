//! Recovery: a client that subscribes with the position it last saw (a client the workload
//! closed, reconnecting to a random edge with its predecessor's positions) either is told
//! `recovered: false`, or `recovered: true` and then gets exactly what followed the
//! position: the deliveries that arrive with the ack (the recovered span) continue at
//! `seq + 1` in the position's epoch, one by one, with no gap and no duplicate, and the
//! first delivery after them is not a duplicate either. A gap before that first live
//! delivery is not judged: the edge's link can lose messages after the recovery (delivery
//! is at most once on a connection; sim seed 147 lost one in a partition 10 s later), so
//! the seam's "no gap" is checked end to end in `tests/recovery.rs` instead.
//!
//! Guards the edge's recovery (the connection joins the topic's recipients in lane order,
//! with the owner's answer) and the owner's history (contiguous, bounded, by epoch).

use std::time::Duration;

pub const NAME: &str = "recovery without gap or duplicate";

/// A recovered topic being checked on one client.
#[derive(Debug, Clone, Copy)]
pub struct Seam {
    /// The epoch of the position recovered from.
    pub epoch: u64,
    /// The seq the next delivery must have.
    pub next: u64,
    /// When the `recovered: true` ack arrived.
    pub acked: Duration,
}

/// Checks one delivery against the topic's seam. `Ok(true)`: keep checking;
/// `Ok(false)`: done (the first live delivery passed, or another epoch began).
pub fn check(seam: &mut Seam, at: Duration, epoch: u64, seq: u64) -> Result<bool, String> {
    if epoch != seam.epoch {
        return Ok(false);
    }
    if at != seam.acked && seq > seam.next {
        return Ok(false);
    }
    if seq != seam.next {
        let what = if seq < seam.next {
            "a duplicate"
        } else {
            "a gap"
        };
        return Err(format!(
            "{what}: {epoch}.{seq} where {epoch}.{} was due (recovered at {:?})",
            seam.next, seam.acked
        ));
    }
    seam.next += 1;
    Ok(at == seam.acked)
}
