//! Slots: the unit of routing.
//!
//! Every topic maps to one of [`SLOT_COUNT`] slots by `xxh3_64(topic bytes) % 16384`. The
//! metastore assigns each slot to one distributor; edges register interest per slot. Clients
//! in other languages can match the function with the test vectors in `docs/protocol.md`.

use xxhash_rust::xxh3::xxh3_64;

/// A slot number in `0..SLOT_COUNT`.
pub type Slot = u16;

/// The number of slots. A power of two so that `%` is a mask, and large enough that slots
/// spread evenly over hundreds of distributors.
pub const SLOT_COUNT: usize = 16384;

/// The slot that owns `topic`.
pub fn slot_of(topic: &str) -> Slot {
    slot_of_bytes(topic.as_bytes())
}

/// The slot that owns a topic given as raw bytes.
pub fn slot_of_bytes(topic: &[u8]) -> Slot {
    // The remainder is < 16384, which always fits in a u16.
    (xxh3_64(topic) % SLOT_COUNT as u64) as Slot
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same vectors are published in docs/protocol.md; they were cross-checked against
    /// the Python `xxhash` package (`xxh3_64_intdigest`), an independent implementation.
    #[test]
    fn slot_test_vectors() {
        let vectors: &[(&str, u64, Slot)] = &[
            ("", 0x2d06800538d394c2, 5314),
            ("a", 0xe6c632b61e964e1f, 3615),
            ("chat", 0xd227fc9cd69325d8, 9688),
            ("room-1", 0xcc6aa4e1a2368e07, 3591),
            ("news/sport", 0xce09bdf07134d398, 5016),
            ("火塔", 0xe4813e5bebe2f33e, 13118),
        ];
        for &(topic, hash, slot) in vectors {
            assert_eq!(xxh3_64(topic.as_bytes()), hash, "xxh3_64({topic:?})");
            assert_eq!(slot_of(topic), slot, "slot_of({topic:?})");
        }
    }

    #[test]
    fn slots_are_in_range_and_spread() {
        let mut counts = vec![0u32; SLOT_COUNT];
        for i in 0..(SLOT_COUNT * 16) {
            let slot = slot_of(&format!("topic-{i}"));
            counts[slot as usize] += 1;
        }
        let empty = counts.iter().filter(|&&c| c == 0).count();
        // 16 topics per slot on average: an empty slot has probability e^-16 each.
        assert!(
            empty < 5,
            "{empty} slots got no topic out of {} topics",
            SLOT_COUNT * 16
        );
    }
}
