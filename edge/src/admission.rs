//! Admission of client connections: the edge-wide limit and the per-address limit, both
//! taken atomically before the upgrade and given back when the connection ends (a
//! [`Seat`] is dropped), so a burst of simultaneous upgrades cannot pass either limit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` are open (or being opened).
    Full,
    /// This address has `max_connections_per_ip` open.
    PerIp,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// The connection counts, shared by the accept path.
#[derive(Debug)]
pub struct Admission {
    max_total: usize,
    /// 0: no per-address limit.
    max_per_ip: usize,
    counts: Arc<Mutex<Counts>>,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Seat {
    ip: Option<IpAddr>,
    counts: Arc<Mutex<Counts>>,
}

impl Admission {
    pub fn new(max_total: usize, max_per_ip: usize) -> Self {
        Admission {
            max_total,
            max_per_ip,
            counts: Arc::default(),
        }
    }

    /// Takes a place for a connection from `ip` (unknown for transports without one).
    pub fn admit(&self, ip: Option<IpAddr>) -> Result<Seat, Refusal> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if counts.total >= self.max_total {
            return Err(Refusal::Full);
        }
        if let Some(ip) = ip {
            let n = counts.per_ip.entry(ip).or_insert(0);
            if self.max_per_ip > 0 && *n >= self.max_per_ip {
                return Err(Refusal::PerIp);
            }
            *n += 1;
        }
        counts.total += 1;
        Ok(Seat {
            ip,
            counts: self.counts.clone(),
        })
    }

    /// Connections admitted and not yet gone.
    pub fn open(&self) -> usize {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.total = counts.total.saturating_sub(1);
        if let Some(ip) = self.ip {
            if let Some(n) = counts.per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    // The map holds only addresses with open connections.
                    counts.per_ip.remove(&ip);
                }
            }
        }
    }
}

/// A client transport that knows the peer's address (for the per-address limit).
pub trait PeerIp {
    fn peer_ip(&self) -> Option<IpAddr>;
}

impl PeerIp for tokio::net::TcpStream {
    fn peer_ip(&self) -> Option<IpAddr> {
        self.peer_addr().ok().map(|a| a.ip())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_hold_and_seats_come_back() {
        let a = Admission::new(3, 2);
        let ip1 = Some(IpAddr::from([10, 0, 0, 1]));
        let ip2 = Some(IpAddr::from([10, 0, 0, 2]));
        let s1 = a.admit(ip1).unwrap();
        let s2 = a.admit(ip1).unwrap();
        assert_eq!(a.admit(ip1).unwrap_err(), Refusal::PerIp);
        let s3 = a.admit(ip2).unwrap();
        assert_eq!(a.admit(ip2).unwrap_err(), Refusal::Full);
        assert_eq!(a.admit(None).unwrap_err(), Refusal::Full);
        drop(s1);
        let s4 = a.admit(ip1).unwrap();
        assert_eq!(a.open(), 3);
        drop((s2, s3, s4));
        assert_eq!(a.open(), 0);
        assert!(a.counts.lock().unwrap().per_ip.is_empty());
    }
}
