//! Limits per authenticated caller: what one identity may hold at once (watch streams),
//! so one member or key cannot take a node-wide budget from everyone else.
//!
//! A caller is its node certificate's identity, else its API key's name, else
//! `anonymous` (a cluster open without keys, or plaintext).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::api_auth::ApiAuth;
use crate::grpc_tls::Caller;

/// Who a request counts as, for [`PerCaller`].
pub fn caller_key<T>(request: &tonic::Request<T>, auth: &ApiAuth) -> String {
    match Caller::of(request) {
        Caller::Node(node) => format!("node {node}"),
        _ => match auth.key_name(request) {
            Some(name) => format!("key {name}"),
            None => "anonymous".to_string(),
        },
    }
}

/// Counts what each caller holds against `max` per caller. Its table has an entry only per
/// caller holding a permit, so it is bounded by the permits out (themselves bounded by the
/// node-wide limit they sit under).
#[derive(Debug)]
pub struct PerCaller {
    max: usize,
    held: Mutex<HashMap<String, usize>>,
}

/// One held unit; released on drop.
#[derive(Debug)]
pub struct CallerPermit {
    owner: Arc<PerCaller>,
    caller: String,
}

impl PerCaller {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(PerCaller {
            max,
            held: Mutex::default(),
        })
    }

    /// A permit for `caller`, or `None` if it holds `max` already.
    pub fn try_acquire(self: &Arc<Self>, caller: String) -> Option<CallerPermit> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry(caller.clone()).or_default();
        if *n >= self.max {
            if *n == 0 {
                held.remove(&caller);
            }
            return None;
        }
        *n += 1;
        Some(CallerPermit {
            owner: self.clone(),
            caller,
        })
    }

    /// What `caller` holds now.
    pub fn held_by(&self, caller: &str) -> usize {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.get(caller).copied().unwrap_or(0)
    }
}

impl Drop for CallerPermit {
    fn drop(&mut self) {
        let mut held = self.owner.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.caller) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.caller);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_caller_holds_at_most_its_share_and_gets_it_back_on_release() {
        let limit = PerCaller::new(2);
        let a1 = limit.try_acquire("a".into()).unwrap();
        let _a2 = limit.try_acquire("a".into()).unwrap();
        assert!(limit.try_acquire("a".into()).is_none());
        // Another caller is not affected.
        let _b = limit.try_acquire("b".into()).unwrap();
        drop(a1);
        assert_eq!(limit.held_by("a"), 1);
        assert!(limit.try_acquire("a".into()).is_some());
        // Entries leave the table with their last permit.
        drop(_b);
        assert_eq!(limit.held.lock().unwrap().get("b"), None);
        // A zero limit refuses everyone, leaving nothing behind.
        let none = PerCaller::new(0);
        assert!(none.try_acquire("c".into()).is_none());
        assert!(none.held.lock().unwrap().is_empty());
    }
}
