//! A per-thread random-number generator the simulator can seed.
//!
//! Every thread has its own generator, seeded from the OS unless [`seed_thread_rng`] set it
//! (the simulator does, once per run, on its single thread). openraft's election timeouts
//! (through the metastore's runtime) and the membership instance number draw from it, so a
//! simulated run is a function of its seed.

use std::cell::RefCell;

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

thread_local! {
    static RNG: RefCell<StdRng> = RefCell::new(StdRng::from_entropy());
}

/// Makes this thread's generator (and so openraft's election timeouts on it) a function of
/// `seed`.
pub fn seed_thread_rng(seed: u64) {
    RNG.with(|rng| *rng.borrow_mut() = StdRng::seed_from_u64(seed));
}

/// A handle to this thread's generator.
#[derive(Debug, Default, Clone, Copy)]
pub struct ThreadRng;

impl RngCore for ThreadRng {
    fn next_u32(&mut self) -> u32 {
        RNG.with(|rng| rng.borrow_mut().next_u32())
    }

    fn next_u64(&mut self) -> u64 {
        RNG.with(|rng| rng.borrow_mut().next_u64())
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        RNG.with(|rng| rng.borrow_mut().fill_bytes(dest))
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        RNG.with(|rng| rng.borrow_mut().try_fill_bytes(dest))
    }
}
