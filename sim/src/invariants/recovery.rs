//! Recovery: a client that subscribes with the position it last saw (a client the workload
//! closed, reconnecting to a random edge with its predecessor's positions) either is told
//! `recovered: true` and then gets exactly what followed the position (its deliveries of
//! the topic continue at `seq + 1` in the position's epoch, one by one, with no gap and no
//! duplicate, through the recovered messages and the first live one after them), or is
//! told `recovered: false`. Checked on every delivery of a topic recovered this way, until
//! the first delivery that arrives after the ack's instant (the first live one) or a
//! delivery of another epoch (the slot moved).
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
