use super::*;
use proptest::prelude::*;

fn register(kind: MemberKind, id: u64) -> Command {
    Command::Register {
        kind,
        id,
        addrs: BTreeMap::new(),
        lease_ttl_ms: 3000,
        instance: 0,
    }
}

#[test]
fn a_retried_register_of_the_same_process_changes_nothing() {
    let mut state = MetaState::default();
    let with_instance = |instance| Command::Register {
        kind: MemberKind::Distributor,
        id: 1,
        addrs: BTreeMap::new(),
        lease_ttl_ms: 3000,
        instance,
    };
    let (first, _) = state.apply(&with_instance(7));
    let revision = state.revision;
    let (again, changes) = state.apply(&with_instance(7));
    assert_eq!(again.incarnation, first.incarnation);
    assert!(changes.is_empty());
    assert_eq!(state.revision, revision);
    // Another process with the same id registers anew.
    let (other, changes) = state.apply(&with_instance(8));
    assert!(other.incarnation > first.incarnation);
    assert!(!changes.is_empty());
}

fn owners(state: &MetaState) -> Vec<u64> {
    state.slot_owner.iter().map(|o| o.distributor).collect()
}

fn assert_even(state: &MetaState) {
    let counts = state.slots_per_distributor();
    if counts.is_empty() {
        assert_eq!(state.unowned_slots() as usize, SLOT_COUNT);
        return;
    }
    assert_eq!(
        state.unowned_slots(),
        0,
        "every slot is owned while a distributor lives"
    );
    let max = counts.values().max().copied().unwrap_or(0);
    let min = counts.values().min().copied().unwrap_or(0);
    assert!(max - min <= 1, "uneven: {counts:?}");
}

#[test]
fn first_distributor_takes_every_slot_at_one_epoch() {
    let mut state = MetaState::default();
    let (response, changes) = state.apply(&register(MemberKind::Distributor, 7));
    assert_eq!(response.revision, 1);
    assert_eq!(response.incarnation, 1);
    assert_eq!(changes.len(), 1 + SLOT_COUNT);
    assert!(state.slot_owner.iter().all(|o| *o
        == SlotOwner {
            distributor: 7,
            epoch: 1
        }));
}

#[test]
fn second_distributor_takes_half_with_new_epochs() {
    let mut state = MetaState::default();
    state.apply(&register(MemberKind::Distributor, 1));
    let (response, changes) = state.apply(&register(MemberKind::Distributor, 2));
    assert_eq!(response.revision, 2);
    assert_eq!(changes.len(), 1 + SLOT_COUNT / 2);
    for o in &state.slot_owner {
        match o.distributor {
            1 => assert_eq!(o.epoch, 1),
            2 => assert_eq!(o.epoch, 2),
            other => panic!("unexpected owner {other}"),
        }
    }
    assert_even(&state);
}

#[test]
fn re_registering_a_distributor_keeps_its_slots_at_a_new_epoch() {
    let mut state = MetaState::default();
    state.apply(&register(MemberKind::Distributor, 1));
    state.apply(&register(MemberKind::Distributor, 2));
    let before = state.slot_owner.clone();
    let (response, changes) = state.apply(&register(MemberKind::Distributor, 1));
    assert_eq!(response.incarnation, 3);
    let mine = before.iter().filter(|o| o.distributor == 1).count();
    assert_eq!(
        changes.len(),
        1 + mine,
        "the member record and each of its slots"
    );
    for (old, new) in before.iter().zip(&state.slot_owner) {
        assert_eq!(old.distributor, new.distributor, "nothing moves");
        if new.distributor == 1 {
            assert_eq!(new.epoch, 3, "re-granted at the new incarnation's revision");
        } else {
            assert_eq!(new.epoch, old.epoch);
        }
    }
}

#[test]
fn last_distributor_leaving_orphans_every_slot() {
    let mut state = MetaState::default();
    state.apply(&register(MemberKind::Distributor, 1));
    let (_, changes) = state.apply(&Command::Deregister {
        kind: MemberKind::Distributor,
        id: 1,
    });
    assert_eq!(changes.len(), 1 + SLOT_COUNT);
    assert!(state
        .slot_owner
        .iter()
        .all(|o| o.distributor == 0 && o.epoch == 2));
}

#[test]
fn stale_expiry_is_rejected_and_changes_nothing() {
    let mut state = MetaState::default();
    state.apply(&register(MemberKind::Edge, 5)); // incarnation 1
    state.apply(&register(MemberKind::Edge, 5)); // incarnation 2
    let before = state.clone();
    let (response, changes) = state.apply(&Command::Expire {
        kind: MemberKind::Edge,
        id: 5,
        incarnation: 1,
    });
    assert!(changes.is_empty());
    assert_eq!(
        response.rejected,
        Some(Rejection::UnknownMember {
            kind: MemberKind::Edge,
            id: 5
        })
    );
    assert_eq!(
        state, before,
        "a rejected command leaves the revision alone too"
    );
    let (_, changes) = state.apply(&Command::Expire {
        kind: MemberKind::Edge,
        id: 5,
        incarnation: 2,
    });
    assert_eq!(changes.len(), 1);
    assert!(state.edges.is_empty());
}

#[test]
fn interest_is_tracked_per_slot_and_dropped_with_the_edge() {
    let mut state = MetaState::default();
    state.apply(&register(MemberKind::Edge, 1));
    state.apply(&register(MemberKind::Edge, 2));
    let (r, changes) = state.apply(&Command::UpdateInterest {
        edge: 1,
        add: vec![10, 11, 11],
        remove: vec![],
    });
    assert_eq!((r.revision, changes.len()), (3, 2));
    state.apply(&Command::UpdateInterest {
        edge: 2,
        add: vec![11],
        remove: vec![],
    });
    assert_eq!(state.slot_edges[&11], BTreeSet::from([1, 2]));
    // Removing a slot it never had changes nothing.
    let (r, changes) = state.apply(&Command::UpdateInterest {
        edge: 2,
        add: vec![],
        remove: vec![10],
    });
    assert_eq!((r.revision, changes.len()), (4, 0));
    state.apply(&Command::Deregister {
        kind: MemberKind::Edge,
        id: 1,
    });
    assert_eq!(
        state.slot_edges,
        BTreeMap::from([(11, BTreeSet::from([2]))])
    );
    // Unknown edges are rejected.
    let (r, _) = state.apply(&Command::UpdateInterest {
        edge: 9,
        add: vec![1],
        remove: vec![],
    });
    assert_eq!(
        r.rejected,
        Some(Rejection::UnknownMember {
            kind: MemberKind::Edge,
            id: 9
        })
    );
}

#[test]
fn hot_topics_set_and_clear_once() {
    let mut state = MetaState::default();
    let (r, c) = state.apply(&Command::SetHotTopic {
        topic: "t".into(),
        shards: 8,
    });
    assert_eq!((r.revision, c.len()), (1, 1));
    let (r, c) = state.apply(&Command::SetHotTopic {
        topic: "t".into(),
        shards: 8,
    });
    assert_eq!(
        (r.revision, c.len()),
        (1, 0),
        "setting the same value is not a change"
    );
    let (r, c) = state.apply(&Command::ClearHotTopic { topic: "t".into() });
    assert_eq!((r.revision, c.len()), (2, 1));
    assert!(state.hot_topics.is_empty());
}

#[derive(Debug, Clone)]
enum Op {
    Join(u64),
    Leave(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u64..12).prop_map(Op::Join),
        (1u64..12).prop_map(Op::Leave)
    ]
}

/// The fewest slots that must change hands between live distributors: whoever holds more
/// than its share must give up the excess. Each of the `SLOT_COUNT % n` larger shares goes
/// to a distributor that holds at least that much already, wherever there is one.
fn minimal_moves(before: &[u64], live: &BTreeSet<u64>) -> usize {
    let n = live.len();
    if n == 0 {
        return 0;
    }
    let mut counts: Vec<usize> = live
        .iter()
        .map(|id| before.iter().filter(|&&owner| owner == *id).count())
        .collect();
    counts.sort_unstable_by(|a, b| b.cmp(a));
    let (base, extra) = (SLOT_COUNT / n, SLOT_COUNT % n);
    counts
        .iter()
        .enumerate()
        .map(|(i, &c)| c.saturating_sub(base + usize::from(i < extra)))
        .sum()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// After every join or leave: max − min ≤ 1 slot across live distributors, every slot is
    /// owned, epochs only grow, orphaned slots all move, and between live distributors only
    /// the unavoidable number of slots moves.
    #[test]
    fn rebalancing_is_even_and_minimal(ops in proptest::collection::vec(op(), 1..40)) {
        let mut state = MetaState::default();
        for op in ops {
            let before = owners(&state);
            let epochs_before: Vec<u64> = state.slot_owner.iter().map(|o| o.epoch).collect();
            let command = match op {
                Op::Join(id) => register(MemberKind::Distributor, id),
                Op::Leave(id) => Command::Deregister { kind: MemberKind::Distributor, id },
            };
            state.apply(&command);
            assert_even(&state);
            let after = owners(&state);
            let live: BTreeSet<u64> = state.distributors.keys().copied().collect();
            let mut moved_between_live = 0;
            for slot in 0..SLOT_COUNT {
                let (b, a) = (before[slot], after[slot]);
                prop_assert!(state.slot_owner[slot].epoch >= epochs_before[slot]);
                if b != a {
                    prop_assert!(state.slot_owner[slot].epoch > epochs_before[slot], "a move bumps the epoch");
                    if live.contains(&b) {
                        moved_between_live += 1;
                    }
                } else if !live.is_empty() {
                    prop_assert!(live.contains(&a), "slot {} left with dead owner {}", slot, a);
                }
            }
            prop_assert_eq!(moved_between_live, minimal_moves(&before, &live));
        }
    }
}
