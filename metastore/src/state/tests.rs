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

/// A drain (issue 16): the distributor stays a member, every one of its slots moves to the
/// others at once, a retry changes nothing, and its next process takes slots again.
#[test]
fn a_draining_distributor_stays_a_member_and_hands_every_slot_to_the_others() {
    let mut state = MetaState::default();
    for id in [1, 2, 3] {
        state.apply(&register(MemberKind::Distributor, id));
    }
    let (response, changes) = state.apply(&Command::Drain {
        kind: MemberKind::Distributor,
        id: 2,
    });
    assert_eq!(response.rejected, None);
    assert!(state.distributors.contains_key(&2), "still a member");
    assert!(!changes.is_empty());
    let now = owners(&state);
    assert!(now.iter().all(|&o| o == 1 || o == 3), "no slot left on 2");
    let ones = now.iter().filter(|&&o| o == 1).count();
    assert!(
        ones.abs_diff(SLOT_COUNT - ones) <= 1,
        "1 and 3 share evenly"
    );
    let before = state.clone();
    let (_, again) = state.apply(&Command::Drain {
        kind: MemberKind::Distributor,
        id: 2,
    });
    assert!(again.is_empty(), "a retried drain moves nothing");
    assert_eq!(owners(&before), owners(&state));
    // Leaving for good moves nothing more; an unknown member is refused.
    let (_, left) = state.apply(&Command::Deregister {
        kind: MemberKind::Distributor,
        id: 2,
    });
    assert_eq!(left.len(), 1, "only the member's departure: {left:?}");
    let (refused, _) = state.apply(&Command::Drain {
        kind: MemberKind::Distributor,
        id: 9,
    });
    assert!(refused.rejected.is_some());
    // A distributor that drains and comes back (a new process) takes its share again.
    state.apply(&Command::Drain {
        kind: MemberKind::Distributor,
        id: 3,
    });
    assert!(owners(&state).iter().all(|&o| o == 1));
    let mut back = register(MemberKind::Distributor, 3);
    if let Command::Register { instance, .. } = &mut back {
        *instance = 77;
    }
    state.apply(&back);
    assert_even(&state);
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

fn set_hot(topic: &str, shards: u32) -> Command {
    Command::SetHotTopic {
        topic: topic.into(),
        shards,
        by: "ops".into(),
    }
}

fn ack(edge: u64, topic: &str, since: u64) -> Command {
    Command::AckHotTopic {
        edge,
        topic: topic.into(),
        since,
    }
}

fn hot_change(
    topic: &str,
    shards: u32,
    prev_shards: u32,
    since: u64,
    committed: bool,
    revision: u64,
) -> pb::Change {
    change(pb::change::Change::HotTopicSet(pb::HotTopic {
        topic: topic.into(),
        shards,
        prev_shards,
        since,
        committed,
        revision,
    }))
}

/// Two registered edges (revisions 1 and 2).
fn two_edges() -> MetaState {
    let mut state = MetaState::default();
    state.apply(&register(MemberKind::Edge, 1));
    state.apply(&register(MemberKind::Edge, 2));
    state
}

#[test]
fn a_split_is_prepared_and_commits_when_every_edge_acked() {
    let mut state = two_edges();
    let (r, c) = state.apply(&set_hot("t", 8));
    assert_eq!(r.revision, 3);
    assert_eq!(c, vec![hot_change("t", 8, 0, 3, false, 3)]);

    let (r, c) = state.apply(&ack(1, "t", 3));
    assert_eq!(
        (r.revision, c),
        (3, vec![]),
        "one of two acks commits nothing"
    );
    assert_eq!(state.hot_topics["t"].acked, BTreeSet::from([1]));
    assert!(!state.hot_topics["t"].committed);

    let (r, c) = state.apply(&ack(2, "t", 3));
    assert_eq!(r.revision, 4);
    assert_eq!(
        c,
        vec![hot_change("t", 8, 0, 3, true, 4)],
        "since stays the route tag"
    );
    assert_eq!(
        state.to_proto().hot_topics,
        vec![pb::HotTopic {
            topic: "t".into(),
            shards: 8,
            prev_shards: 0,
            since: 3,
            committed: true,
            revision: 4,
        }]
    );

    // Acks after the commit, and setting the same count again, change nothing.
    let before = state.clone();
    assert!(state.apply(&ack(2, "t", 3)).1.is_empty());
    assert!(state.apply(&set_hot("t", 8)).1.is_empty());
    assert_eq!(state, before);
}

#[test]
fn an_ack_of_another_prepare_or_an_unknown_edge_is_ignored() {
    let mut state = two_edges();
    state.apply(&set_hot("t", 8)); // since 3
    let before = state.clone();
    for stale in [0, 2, 4] {
        let (r, c) = state.apply(&ack(1, "t", stale));
        assert_eq!((r.revision, c, r.rejected), (3, vec![], None));
    }
    let (_, c) = state.apply(&ack(1, "other", 3));
    assert!(c.is_empty());
    assert_eq!(state, before, "no ack was recorded");
    let (r, c) = state.apply(&ack(9, "t", 3));
    assert!(c.is_empty());
    assert_eq!(
        r.rejected,
        Some(Rejection::UnknownMember {
            kind: MemberKind::Edge,
            id: 9
        })
    );
    assert_eq!(state, before);
}

#[test]
fn setting_the_same_count_during_a_prepare_is_a_no_op() {
    let mut state = two_edges();
    state.apply(&set_hot("t", 8));
    state.apply(&ack(1, "t", 3));
    let before = state.clone();
    assert!(state.apply(&set_hot("t", 8)).1.is_empty());
    assert_eq!(state, before, "the prepare and its acks stand");
}

#[test]
fn a_set_during_a_prepare_is_refused_until_it_commits() {
    let mut state = two_edges();
    state.apply(&set_hot("t", 4)); // 3: 0 -> 4, prepared
    state.apply(&ack(1, "t", 3));
    let before = state.clone();
    let (r, c) = state.apply(&set_hot("t", 8));
    assert!(c.is_empty());
    assert_eq!(
        r.rejected,
        Some(Rejection::HotChangeInProgress {
            topic: "t".into(),
            since: 3
        })
    );
    assert_eq!(state, before, "the prepare and its acks stand");
    assert!(state
        .apply(&Command::ClearHotTopic { topic: "t".into() })
        .0
        .rejected
        .is_some());
    // Once committed, the next change starts from the new route.
    state.apply(&ack(2, "t", 3)); // commits at 4
    let (r, c) = state.apply(&set_hot("t", 8));
    assert_eq!(r.revision, 5);
    assert_eq!(c, vec![hot_change("t", 8, 4, 5, false, 5)]);
}

#[test]
fn a_clear_is_a_prepared_tombstone_from_the_committed_shards() {
    let mut state = two_edges();
    state.apply(&set_hot("t", 8));
    state.apply(&ack(1, "t", 3));
    state.apply(&ack(2, "t", 3)); // committed at revision 4
    let (r, c) = state.apply(&Command::ClearHotTopic { topic: "t".into() });
    assert_eq!(r.revision, 5);
    assert_eq!(c, vec![hot_change("t", 1, 8, 5, false, 5)]);
    state.apply(&ack(1, "t", 5));
    let (r, c) = state.apply(&ack(2, "t", 5));
    assert_eq!(
        (r.revision, c),
        (6, vec![hot_change("t", 1, 8, 5, true, 6)])
    );
    assert_eq!(
        state.hot_topics.len(),
        1,
        "the merged topic stays, carried by its one sub-topic T#0"
    );

    // Clearing again, or clearing a topic never split, changes nothing.
    assert!(state
        .apply(&Command::ClearHotTopic { topic: "t".into() })
        .1
        .is_empty());
    assert!(state.apply(&set_hot("never", 0)).1.is_empty());
    assert_eq!(state.revision, 6);
    assert!(!state.hot_topics.contains_key("never"));

    // Splitting the merged topic again starts from T#0, at a higher since.
    let (_, c) = state.apply(&set_hot("t", 2));
    assert_eq!(c, vec![hot_change("t", 2, 1, 7, false, 7)]);
}

#[test]
fn without_edges_a_change_commits_at_once() {
    let mut state = MetaState::default();
    state.apply(&register(MemberKind::Distributor, 1));
    let (r, c) = state.apply(&set_hot("t", 8));
    assert_eq!(
        (r.revision, c),
        (2, vec![hot_change("t", 8, 0, 2, true, 2)])
    );
    let (r, c) = state.apply(&Command::ClearHotTopic { topic: "t".into() });
    assert_eq!(
        (r.revision, c),
        (3, vec![hot_change("t", 1, 8, 3, true, 3)])
    );
}

#[test]
fn an_edge_registering_during_a_prepare_must_ack_too() {
    let mut state = MetaState::default();
    state.apply(&register(MemberKind::Edge, 1));
    state.apply(&set_hot("t", 8)); // since 2
    state.apply(&register(MemberKind::Edge, 2));
    assert!(state.apply(&ack(1, "t", 2)).1.is_empty());
    assert_eq!(
        state.apply(&ack(2, "t", 2)).1,
        vec![hot_change("t", 8, 0, 2, true, 4)]
    );
}

#[test]
fn the_expiry_of_the_last_unacked_edge_commits() {
    let mut state = two_edges();
    state.apply(&set_hot("a", 8)); // 3
    state.apply(&set_hot("b", 4)); // 4
    state.apply(&ack(1, "a", 3));
    state.apply(&ack(1, "b", 4));
    state.apply(&ack(2, "b", 4)); // b commits at 5
    state.apply(&Command::UpdateInterest {
        edge: 2,
        add: vec![7],
        remove: vec![],
    }); // 6
    let incarnation = state.edges[&2].incarnation;
    let (r, c) = state.apply(&Command::Expire {
        kind: MemberKind::Edge,
        id: 2,
        incarnation,
    });
    assert_eq!(r.revision, 7);
    assert_eq!(
        c,
        vec![
            change(pb::change::Change::MemberDown(pb::MemberRef {
                kind: pb::MemberKind::Edge as i32,
                id: 2,
            })),
            slot_edge_change(7, 2, false),
            hot_change("a", 8, 0, 3, true, 7),
        ],
        "member down, its interest, then what it held back; b was committed already"
    );
}

#[test]
fn a_removed_edge_loses_its_acks() {
    let mut state = two_edges();
    state.apply(&register(MemberKind::Edge, 3));
    state.apply(&set_hot("t", 8)); // 4
    state.apply(&ack(1, "t", 4));
    state.apply(&ack(2, "t", 4));
    let (_, c) = state.apply(&Command::Deregister {
        kind: MemberKind::Edge,
        id: 2,
    });
    assert_eq!(c.len(), 1, "edge 3 still holds the change back");
    assert_eq!(state.hot_topics["t"].acked, BTreeSet::from([1]));
    // Back under the same id, it must ack again.
    state.apply(&register(MemberKind::Edge, 2));
    assert!(state.apply(&ack(3, "t", 4)).1.is_empty());
    assert_eq!(
        state.apply(&ack(2, "t", 4)).1,
        vec![hot_change("t", 8, 0, 4, true, 7)]
    );
}

#[test]
fn snapshots_keep_acks_and_read_the_old_shard_counts() {
    let mut state = two_edges();
    state.apply(&set_hot("t", 8));
    state.apply(&ack(1, "t", 3));
    let json = serde_json::to_string(&state).expect("serializes");
    let back: MetaState = serde_json::from_str(&json).expect("deserializes");
    assert_eq!(back, state);

    // Before the two-phase change a snapshot held a bare count: a committed route.
    let old = json.replace(
        r#""t":{"shards":8,"prev_shards":0,"since":3,"committed":false,"changed":3,"acked":[1],"creator":"ops"}"#,
        r#""t":8"#,
    );
    assert_ne!(old, json);
    let back: MetaState = serde_json::from_str(&old).expect("reads the old form");
    assert_eq!(
        back.hot_topics["t"],
        HotEntry {
            shards: 8,
            prev_shards: 0,
            since: 0,
            committed: true,
            changed: 0,
            acked: BTreeSet::new(),
            creator: String::new(),
        }
    );
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

#[test]
fn a_hot_topic_remembers_who_made_it_across_its_changes() {
    let mut state = MetaState::default();
    state.apply(&Command::SetHotTopic {
        topic: "t".into(),
        shards: 4,
        by: "key ops".into(),
    });
    state.apply(&Command::SetHotTopic {
        topic: "t".into(),
        shards: 8,
        by: "node distributor 2".into(),
    });
    state.apply(&Command::ClearHotTopic { topic: "t".into() });
    assert_eq!(state.hot_topics["t"].creator, "key ops");
    // The snapshot carries it; an entry written before it existed reads with none.
    let json = serde_json::to_string(&state).unwrap();
    let back: MetaState = serde_json::from_str(&json).unwrap();
    assert_eq!(back.hot_topics["t"].creator, "key ops");
    let old = json.replace(r#","creator":"key ops""#, "");
    assert_ne!(old, json);
    let back: MetaState = serde_json::from_str(&old).unwrap();
    assert_eq!(back.hot_topics["t"].creator, "");
}
