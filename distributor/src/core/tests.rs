//! Unit tests of sequencing, interest, fences, replay and the split/merge policy.

use super::*;
use firetower_proto::SLOT_COUNT;

/// Every command the core made since the last call.
pub(super) fn drain(core: &mut DistributorCore) -> Vec<Command> {
    std::iter::from_fn(|| core.poll_command()).collect()
}

fn fences(core: &mut DistributorCore) -> Vec<FenceOut> {
    drain(core)
        .into_iter()
        .filter_map(|c| match c {
            Command::Fence(f) => Some(f),
            _ => None,
        })
        .collect()
}

fn proposals_of(core: &mut DistributorCore) -> Vec<HotProposal> {
    drain(core)
        .into_iter()
        .filter_map(|c| match c {
            Command::Propose(p) => Some(p),
            _ => None,
        })
        .collect()
}

/// The payloads an interest replayed.
fn replayed(core: &mut DistributorCore) -> Vec<Bytes> {
    drain(core)
        .into_iter()
        .flat_map(|c| match c {
            Command::Replay { deliveries, .. } => deliveries,
            _ => Vec::new(),
        })
        .map(|d| d.deliver().data.clone())
        .collect()
}

/// Sequences one message under `tag` and keeps its delivery as the node would.
fn publish_tagged(core: &mut DistributorCore, name: &str, tag: u64, data: Bytes) {
    let outcome = core
        .sequence_run(name, tag, &[(None, 0, data)], &[])
        .unwrap();
    assert!(matches!(outcome, RunOutcome::Sequenced(_)), "{outcome:?}");
}

fn snapshot(owner_of: impl Fn(usize) -> u64, epoch: u64, edges: Vec<(u32, u64)>) -> pb::WatchEvent {
    pb::WatchEvent {
        event: Some(pb::watch_event::Event::Snapshot(pb::SlotMap {
            revision: epoch,
            members: vec![],
            slot_owner: (0..SLOT_COUNT).map(owner_of).collect(),
            slot_epoch: vec![epoch; SLOT_COUNT],
            slot_edges: edges
                .into_iter()
                .map(|(slot, edge)| pb::SlotEdges {
                    slot,
                    edge_ids: vec![edge],
                })
                .collect(),
            hot_topics: vec![],
        })),
    }
}

pub(super) fn move_slot(slot: Slot, to: u64, epoch: u64) -> pb::WatchEvent {
    pb::WatchEvent {
        event: Some(pb::watch_event::Event::Delta(pb::Delta {
            revision: epoch,
            changes: vec![pb::Change {
                change: Some(pb::change::Change::SlotOwner(pb::SlotOwnerChange {
                    slot: slot as u32,
                    distributor_id: to,
                    epoch,
                })),
            }],
        })),
    }
}

#[test]
fn sequences_owned_topics_and_forwards_others() {
    let mut core = DistributorCore::new(1, 100);
    core.handle_registered(1);
    let chat = slot_of("chat") as usize;
    core.handle_watch(
        Instant::now(),
        snapshot(|s| if s == chat { 1 } else { 2 }, 5, vec![]),
    );
    core.handle_edge_up(9);
    core.handle_interest(9, "chat", 3, 5, 0, (0, 0)).unwrap();
    for seq in 1..=3 {
        assert_eq!(
            core.sequence("chat", 0).unwrap(),
            PublishOutcome::Sequenced {
                epoch: 5,
                seq,
                edges: vec![9]
            }
        );
    }
    assert_eq!(
        core.sequence("room-1", 0).unwrap(),
        PublishOutcome::NotOwner { owner: 2 }
    );
    assert_eq!(
        core.topic_count("chat"),
        Ok(TopicCount {
            subscribers: 3,
            edges: vec![9],
            edge_subscribers: vec![3],
            stats: TopicStats {
                sequenced: 3,
                relayed: 3
            },
        })
    );
    assert_eq!(core.topic_count("room-1"), Err(2));
    assert_eq!(core.relayed(), 3);
}

#[test]
fn a_new_reign_restarts_seq_and_ignores_stale_interest() {
    let mut core = DistributorCore::new(1, 100);
    core.handle_registered(1);
    let s = slot_of("chat");
    core.handle_watch(Instant::now(), snapshot(|_| 1, 5, vec![]));
    core.handle_edge_up(9);
    core.handle_interest(9, "chat", 1, 5, 0, (0, 0)).unwrap();
    core.sequence("chat", 0).unwrap();
    core.handle_watch(Instant::now(), move_slot(s, 2, 8));
    // The edge already announced for the reign at epoch 10 before we saw it.
    core.handle_interest(9, "chat", 2, 10, 0, (0, 0)).unwrap();
    core.handle_watch(Instant::now(), move_slot(s, 1, 10));
    assert_eq!(
        core.sequence("chat", 0).unwrap(),
        PublishOutcome::Sequenced {
            epoch: 10,
            seq: 1,
            edges: vec![9]
        }
    );
    // Interest tagged with an older epoch does not count.
    core.handle_edge_up(7);
    core.handle_interest(7, "chat", 1, 5, 0, (0, 0)).unwrap();
    assert_eq!(core.topic_count("chat").unwrap().edges, vec![9]);
}

#[test]
fn falls_back_to_metastore_edges_until_synced() {
    let mut core = DistributorCore::new(1, 100);
    core.handle_registered(1);
    let s = slot_of("chat");
    core.handle_watch(
        Instant::now(),
        snapshot(|_| 1, 5, vec![(s as u32, 4), (s as u32, 6)]),
    );
    core.handle_edge_up(4);
    // Edge 6 is listed but not connected: nothing can go to it.
    let PublishOutcome::Sequenced { edges, .. } = core.sequence("chat", 0).unwrap() else {
        panic!("owned")
    };
    assert_eq!(edges, vec![4]);
    core.handle_slots_synced(4, &[s as u32], &[5]);
    let PublishOutcome::Sequenced { edges, .. } = core.sequence("chat", 0).unwrap() else {
        panic!("owned")
    };
    assert!(edges.is_empty(), "edge 4 synced without interest in chat");
}

#[test]
fn a_retried_forward_is_sequenced_once() {
    let mut core = DistributorCore::new(1, 100);
    core.handle_registered(1);
    core.handle_watch(Instant::now(), snapshot(|_| 1, 5, vec![]));
    core.handle_edge_up(9);
    core.handle_interest(9, "chat", 1, 5, 0, (0, 0)).unwrap();
    let first = core.sequence_forwarded("chat", 0, (2, 1, 77)).unwrap();
    assert_eq!(
        first,
        PublishOutcome::Sequenced {
            epoch: 5,
            seq: 1,
            edges: vec![9]
        }
    );
    assert_eq!(
        core.sequence_forwarded("chat", 0, (2, 1, 77)).unwrap(),
        PublishOutcome::Sequenced {
            epoch: 5,
            seq: 1,
            edges: vec![]
        }
    );
    assert_eq!(
        core.sequence_forwarded("chat", 0, (2, 1, 78)).unwrap(),
        PublishOutcome::Sequenced {
            epoch: 5,
            seq: 2,
            edges: vec![9]
        }
    );
}

#[test]
fn no_sequencing_before_registration_or_on_a_view_older_than_it() {
    let mut core = DistributorCore::new(1, 100);
    core.handle_watch(Instant::now(), snapshot(|_| 1, 5, vec![]));
    assert_eq!(
        core.sequence("chat", 0).unwrap(),
        PublishOutcome::NotOwner { owner: 0 }
    );
    // Registered at revision 9, but the view still shows the slot at epoch 5.
    core.handle_registered(9);
    assert_eq!(
        core.sequence("chat", 0).unwrap(),
        PublishOutcome::NotOwner { owner: 0 }
    );
    core.handle_watch(Instant::now(), snapshot(|_| 1, 9, vec![]));
    assert!(matches!(
        core.sequence("chat", 0).unwrap(),
        PublishOutcome::Sequenced {
            epoch: 9,
            seq: 1,
            ..
        }
    ));
}

#[test]
fn edge_down_drops_its_interest_and_the_topic_table_is_bounded() {
    let mut core = DistributorCore::new(1, 2);
    core.handle_registered(1);
    core.handle_watch(Instant::now(), snapshot(|_| 1, 5, vec![]));
    core.handle_edge_up(9);
    core.handle_interest(9, "a", 1, 5, 0, (0, 0)).unwrap();
    core.handle_interest(9, "b", 1, 5, 0, (0, 0)).unwrap();
    assert_eq!(
        core.handle_interest(9, "c", 1, 5, 0, (0, 0)),
        Err(CoreError::TooManyTopics { max: 2 })
    );
    core.handle_edge_down(9);
    assert_eq!(core.topic_table_len(), 0);
    assert_eq!(core.topic_count("a").unwrap(), TopicCount::default());
}

pub(super) fn hot(
    topic: &str,
    shards: u32,
    since: u64,
    committed: bool,
    revision: u64,
) -> pb::WatchEvent {
    pb::WatchEvent {
        event: Some(pb::watch_event::Event::Delta(pb::Delta {
            revision,
            changes: vec![pb::Change {
                change: Some(pb::change::Change::HotTopicSet(pb::HotTopic {
                    topic: topic.into(),
                    shards,
                    prev_shards: 0,
                    since,
                    committed,
                    revision,
                })),
            }],
        })),
    }
}

#[test]
fn a_stale_route_is_refused_and_a_moved_on_view_fences_its_edges() {
    let mut core = DistributorCore::new(1, 100);
    core.handle_registered(1);
    core.handle_watch(Instant::now(), snapshot(|_| 1, 5, vec![]));
    core.handle_edge_up(9);
    core.handle_interest(9, "live", 1, 5, 0, (0, 0)).unwrap();
    core.handle_interest(9, "live#1", 1, 5, 0, (0, 0)).unwrap();
    assert!(matches!(
        core.sequence("live", 0).unwrap(),
        PublishOutcome::Sequenced { .. }
    ));
    drain(&mut core);
    core.handle_watch(Instant::now(), hot("live", 2, 6, false, 6));
    let mut seen = fences(&mut core);
    seen.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert_eq!(
        seen,
        vec![
            FenceOut {
                topic: "live".into(),
                since: 6,
                edges: vec![9]
            },
            FenceOut {
                topic: "live#1".into(),
                since: 6,
                edges: vec![9]
            },
        ]
    );
    assert_eq!(
        core.sequence("live", 0).unwrap(),
        PublishOutcome::StaleRoute { since: 6 }
    );
    assert!(matches!(
        core.sequence("live", 6).unwrap(),
        PublishOutcome::Sequenced { .. }
    ));
    // The commit moves the fence again; the prepare's tag is refused from then on.
    core.handle_watch(Instant::now(), hot("live", 2, 6, true, 7));
    assert_eq!(fences(&mut core).len(), 2);
    assert_eq!(
        core.sequence("live#0", 6).unwrap(),
        PublishOutcome::StaleRoute { since: 7 }
    );
    assert_eq!(core.fence_for("live#1"), Some(7));
    assert_eq!(core.fence_for("other"), None);
}

#[test]
fn a_tag_below_one_already_sequenced_is_stale_even_before_the_view_shows_its_entry() {
    let mut core = DistributorCore::new(1, 100);
    core.handle_registered(1);
    core.handle_watch(Instant::now(), snapshot(|_| 1, 5, vec![]));
    // This owner's view has no hot entry for "live" yet; the topic's owner, whose view has
    // the prepared split (tag 8), sends it a sub-topic run first, then one whose view is as
    // old as ours. (The topic's own name waits for the view instead: below.)
    assert!(matches!(
        core.sequence("live#0", 8).unwrap(),
        PublishOutcome::Sequenced { seq: 1, .. }
    ));
    assert_eq!(
        core.sequence("live#0", 0).unwrap(),
        PublishOutcome::StaleRoute { since: 8 }
    );
    assert!(matches!(
        core.sequence("live#0", 8).unwrap(),
        PublishOutcome::Sequenced { seq: 2, .. }
    ));
    // Every name of the topic: a sub-topic tagged below it is stale too.
    assert_eq!(
        core.sequence("live#1", 6).unwrap(),
        PublishOutcome::StaleRoute { since: 8 }
    );
    // Other topics are not affected.
    assert!(matches!(
        core.sequence("other", 0).unwrap(),
        PublishOutcome::Sequenced { seq: 1, .. }
    ));
    // The topic's own name is not numbered under a tag its view lacks: numbering it decides
    // where it goes on to. It waits (as for an owner not known yet).
    assert_eq!(
        core.sequence("live", 8).unwrap(),
        PublishOutcome::NotOwner { owner: 0 }
    );
    // Once the view shows the entry, the floor is the view's again.
    core.handle_watch(Instant::now(), hot("live", 2, 8, true, 9));
    assert_eq!(
        core.sequence("live#0", 8).unwrap(),
        PublishOutcome::StaleRoute { since: 9 }
    );
}

#[test]
fn an_edge_joining_a_route_late_gets_what_was_published_since_the_change() {
    let mut core = DistributorCore::new(1, 100);
    core.handle_registered(1);
    core.handle_watch(Instant::now(), snapshot(|_| 1, 5, vec![]));
    core.handle_edge_up(9);
    for (n, tag) in [(1u8, 0u64), (2, 6), (3, 6), (4, 7)] {
        publish_tagged(&mut core, "live#0", tag, Bytes::from(vec![n]));
    }
    drain(&mut core);
    // Joining for the change prepared at 6: the messages tagged 6 and later.
    core.handle_interest(9, "live#0", 3, 5, 6, (0, 0)).unwrap();
    assert_eq!(
        replayed(&mut core),
        vec![
            Bytes::from(vec![2]),
            Bytes::from(vec![3]),
            Bytes::from(vec![4])
        ]
    );
    // Already joined: a count update replays nothing.
    core.handle_interest(9, "live#0", 4, 5, 6, (0, 0)).unwrap();
    assert!(replayed(&mut core).is_empty());
    // The history is bounded.
    core.handle_interest(9, "live#0", 0, 5, 0, (0, 0)).unwrap();
    for _ in 0..HISTORY_FRAMES + 10 {
        publish_tagged(&mut core, "live#0", 7, Bytes::from_static(b"x"));
    }
    drain(&mut core);
    core.handle_interest(9, "live#0", 1, 5, 6, (0, 0)).unwrap();
    assert_eq!(replayed(&mut core).len(), HISTORY_FRAMES);
    // And by bytes: of 40 frames of 64 KiB, fewer than 16 (1 MiB with their headers)
    // stay.
    core.handle_interest(9, "live#0", 0, 5, 0, (0, 0)).unwrap();
    for _ in 0..40 {
        publish_tagged(&mut core, "live#0", 7, Bytes::from(vec![0u8; 64 << 10]));
    }
    drain(&mut core);
    core.handle_interest(9, "live#0", 1, 5, 6, (0, 0)).unwrap();
    assert_eq!(replayed(&mut core).len(), 15);
}

/// A slot moved here before an edge linked to this node: its first deliveries went to no
/// edge. The edge's interest says what it passed of the stream, and gets the rest first
/// (tests/recovery.rs saw the move's first message missing at an edge that stayed).
#[test]
fn an_edge_announcing_what_it_passed_gets_the_rest_of_the_stream() {
    let mut core = owning_core(HistoryPolicy::default());
    for n in 1..=5u8 {
        publish_tagged(&mut core, "chat", 0, Bytes::from(vec![n]));
    }
    drain(&mut core);
    // The edge passed (5, 3): 4 and 5 come first.
    core.handle_interest(9, "chat", 1, 5, 0, (5, 3)).unwrap();
    assert_eq!(
        replayed(&mut core),
        vec![Bytes::from(vec![4]), Bytes::from(vec![5])]
    );
    // Already recorded: nothing again.
    core.handle_interest(9, "chat", 2, 5, 0, (5, 3)).unwrap();
    assert!(replayed(&mut core).is_empty());
    // A new subscriber here (nothing passed), another stream's position, or one caught up:
    // nothing.
    for (edge, passed) in [(10, (0, 0)), (11, (4, 2)), (12, (5, 5))] {
        core.handle_edge_up(edge);
        core.handle_interest(edge, "chat", 1, 5, 0, passed).unwrap();
        assert!(replayed(&mut core).is_empty(), "{passed:?}");
    }
}

#[test]
fn sustained_load_proposes_a_split_and_sustained_quiet_a_merge() {
    let policy = HotPolicy {
        enabled: true,
        split_load: 100,
        merge_load: 10,
        window_ms: 1000,
        windows: 3,
        max_shards: 16,
    };
    let mut core = DistributorCore::with_hot_policy(1, 100, policy);
    core.handle_registered(1);
    core.handle_watch(Instant::now(), snapshot(|_| 1, 5, vec![]));
    for edge in [7, 8, 9] {
        core.handle_edge_up(edge);
        core.handle_interest(edge, "live", 1, 5, 0, (0, 0)).unwrap();
    }
    let t0 = Instant::now();
    drain(&mut core);
    core.handle_tick(t0);
    assert!(proposals_of(&mut core).is_empty());
    let mut proposals = Vec::new();
    for w in 1..=3u64 {
        // 200 messages/s to 3 edges: 600 deliveries/s, above 100.
        for _ in 0..200 {
            core.sequence("live", 0).unwrap();
        }
        core.handle_tick(t0 + Duration::from_secs(w));
        proposals = proposals_of(&mut core);
        if w < 3 {
            assert!(proposals.is_empty(), "window {w}: {proposals:?}");
        }
    }
    // 2 * 600 / 100 = 12, rounded up to a power of two.
    assert_eq!(
        proposals,
        vec![HotProposal {
            topic: "live".into(),
            shards: 16
        }]
    );
    // Split and committed. This routing table lists no registered edges, so the
    // merge estimate for sub-topic 0 (messages/s x registered edges) is 0.
    core.handle_watch(Instant::now(), hot("live", 4, 6, true, 7));
    core.handle_interest(9, "live#0", 1, 5, 7, (0, 0)).unwrap();
    let mut merge = Vec::new();
    for w in 4..=6u64 {
        core.sequence("live#0", 7).unwrap();
        core.handle_tick(t0 + Duration::from_secs(w));
        merge = proposals_of(&mut core);
    }
    assert_eq!(
        merge,
        vec![HotProposal {
            topic: "live".into(),
            shards: 0
        }]
    );
    // Merged: carried by its one sub-topic `live#0`, judged like a plain topic (by the
    // edges that announced it), and split again under load.
    core.handle_watch(Instant::now(), hot("live", 1, 4, true, 9));
    for edge in [7, 8] {
        core.handle_interest(edge, "live#0", 1, 5, 9, (0, 0))
            .unwrap();
    }
    let mut again = Vec::new();
    for w in 7..=9u64 {
        for _ in 0..200 {
            core.sequence("live#0", 9).unwrap();
        }
        core.handle_tick(t0 + Duration::from_secs(w));
        again = proposals_of(&mut core);
    }
    assert_eq!(
        again,
        vec![HotProposal {
            topic: "live".into(),
            shards: 16
        }]
    );
}

/// A core that owns every slot at epoch 5, with history `policy`, edge 9 linked.
fn owning_core(policy: HistoryPolicy) -> DistributorCore {
    let mut core = DistributorCore::new(1, 100).with_history(policy);
    core.handle_registered(1);
    core.handle_watch(Instant::now(), snapshot(|_| 1, 5, vec![]));
    core.handle_edge_up(9);
    core
}

fn seqs(answer: &HistoryAnswer) -> Vec<u64> {
    answer.messages.iter().map(|d| d.deliver().seq).collect()
}

#[test]
fn history_serves_what_followed_a_position_in_the_current_epoch() {
    let mut core = owning_core(HistoryPolicy {
        messages: 5,
        bytes: 1 << 20,
        age_ms: 0,
    });
    // Kept even with no edge interested.
    for i in 0..8u8 {
        publish_tagged(&mut core, "chat", 0, Bytes::from(vec![b'0' + i]));
    }
    drain(&mut core);
    // Bounded to the newest 5: seqs 4..=8.
    let all = core.history("chat", None, 100);
    assert!(all.recovered);
    assert_eq!(all.current, (5, 8));
    assert_eq!(seqs(&all), vec![4, 5, 6, 7, 8]);
    assert_eq!(
        seqs(&core.history("chat", None, 2)),
        vec![7, 8],
        "newest first cut"
    );
    // After seq 3: 4..=8; after 6 with limit 1: 7.
    let after = core.history("chat", Some((5, 3)), 100);
    assert!(after.recovered);
    assert_eq!(seqs(&after), vec![4, 5, 6, 7, 8]);
    assert_eq!(seqs(&core.history("chat", Some((5, 6)), 1)), vec![7]);
    // Caught up: recovered, nothing to send.
    let caught_up = core.history("chat", Some((5, 8)), 100);
    assert!(caught_up.recovered && caught_up.messages.is_empty());
    // Older than the history, another epoch, or ahead of the topic: refused with the
    // current position.
    for since in [(5, 2), (4, 7), (5, 9), (6, 1)] {
        let refused = core.history("chat", Some(since), 100);
        assert!(!refused.recovered, "{since:?}");
        assert_eq!(refused.current, (5, 8));
        assert!(refused.messages.is_empty());
    }
    // A topic never published: position (5, 0), and recovering from it works.
    let fresh = core.history("quiet", Some((5, 0)), 100);
    assert!(fresh.recovered && fresh.messages.is_empty());
    assert_eq!(fresh.current, (5, 0));
}

/// One-shot topics leave the table once idle (issue 15: a million of them refused every
/// new topic for everyone); one an edge wants stays; a topic made again numbers on past its
/// old stream, so an old position is refused, never recovered from the new stream.
#[test]
fn idle_topics_leave_the_table_and_their_numbers_are_not_given_twice() {
    let t0 = Instant::now();
    let mut core = DistributorCore::new(1, 3)
        .with_history(HistoryPolicy::default())
        .with_idle_topics(Duration::from_secs(60));
    core.handle_registered(1);
    core.handle_watch(t0, snapshot(|_| 1, 5, vec![]));
    core.handle_edge_up(9);
    core.handle_interest(9, "wanted", 1, 5, 0, (0, 0)).unwrap();
    core.handle_tick(t0);
    for i in 1..=3u8 {
        publish_tagged(&mut core, "chat", 0, Bytes::from(vec![b'0' + i]));
    }
    publish_tagged(&mut core, "once", 0, Bytes::from_static(b"x"));
    // The table is full (3): a new topic is refused until the idle ones go.
    assert!(core.sequence("new", 0).is_err());
    core.handle_tick(t0 + Duration::from_secs(30));
    assert_eq!(core.counters().topics_evicted, 0, "not idle long enough");
    core.handle_tick(t0 + Duration::from_secs(61));
    assert_eq!(core.counters().topics_evicted, 2);
    assert!(core.topic_count("wanted").is_ok_and(|c| c.subscribers == 1));
    assert!(matches!(
        core.sequence("new", 0),
        Ok(PublishOutcome::Sequenced { .. })
    ));
    // "chat" again: past its old numbers (and any evicted topic's of its slot).
    let gone = core.history("chat", Some((5, 1)), 100);
    assert!(!gone.recovered, "the history went with the topic");
    assert!(gone.current.1 >= 3, "{:?}", gone.current);
    match core.sequence("chat", 0) {
        Ok(PublishOutcome::Sequenced { epoch: 5, seq, .. }) => assert!(seq > 3, "{seq}"),
        other => panic!("{other:?}"),
    }
    assert!(!core.history("chat", Some((5, 2)), 100).recovered);
}

#[test]
fn history_ages_out_and_can_be_off() {
    let mut core = owning_core(HistoryPolicy {
        messages: 100,
        bytes: 1 << 20,
        age_ms: 1000,
    });
    let start = Instant::now();
    core.handle_tick(start);
    publish_tagged(&mut core, "chat", 0, Bytes::from_static(b"1"));
    core.handle_tick(start + Duration::from_millis(600));
    publish_tagged(&mut core, "chat", 0, Bytes::from_static(b"2"));
    core.handle_tick(start + Duration::from_millis(1200));
    // Seq 1 is older than a second now: a position before it cannot be served.
    assert!(!core.history("chat", Some((5, 0)), 10).recovered);
    assert_eq!(seqs(&core.history("chat", Some((5, 1)), 10)), vec![2]);

    let mut off = owning_core(HistoryPolicy {
        messages: 0,
        ..HistoryPolicy::default()
    });
    publish_tagged(&mut off, "chat", 0, Bytes::from_static(b"1"));
    assert!(!off.history("chat", Some((5, 0)), 10).recovered);
    assert!(
        off.history("chat", Some((5, 1)), 10).recovered,
        "nothing missed"
    );
}

#[test]
fn the_busiest_owned_topics_rank_by_their_recent_rate_and_the_history_is_summed() {
    let mut core = owning_core(HistoryPolicy {
        messages: 3,
        bytes: 1 << 20,
        age_ms: 0,
    });
    let start = Instant::now();
    core.handle_tick(start);
    let publish = |core: &mut DistributorCore, topic: &str, n: usize| {
        for _ in 0..n {
            publish_tagged(core, topic, 0, Bytes::from_static(b"1"));
        }
    };
    publish(&mut core, "b", 2);
    publish(&mut core, "a", 4);
    publish(&mut core, "c", 1);
    assert!(core.busiest_topics().is_empty(), "no window has closed yet");
    core.handle_tick(start + Duration::from_secs(1));
    let ranked = |core: &DistributorCore| -> Vec<(String, u64, f64)> {
        core.busiest_topics()
            .iter()
            .map(|t| (t.topic.clone(), t.published, t.rate))
            .collect()
    };
    assert_eq!(
        ranked(&core),
        vec![
            ("a".to_string(), 4, 4.0),
            ("b".to_string(), 2, 2.0),
            ("c".to_string(), 1, 1.0)
        ]
    );
    // A quiet window halves each rate; "d" starts at its own.
    publish(&mut core, "d", 3);
    core.handle_tick(start + Duration::from_secs(2));
    assert_eq!(
        ranked(&core),
        vec![
            ("d".to_string(), 3, 3.0),
            ("a".to_string(), 4, 2.0),
            ("b".to_string(), 2, 1.0),
            ("c".to_string(), 1, 0.5)
        ]
    );
    // At most BUSIEST_TOPICS, the busiest; idle topics drop out.
    for i in 0..30 {
        publish(&mut core, &format!("many/{i:02}"), 10 + i);
    }
    for w in 3..12 {
        core.handle_tick(start + Duration::from_secs(w));
    }
    for i in 0..30 {
        publish(&mut core, &format!("many/{i:02}"), 10 + i);
    }
    core.handle_tick(start + Duration::from_secs(12));
    let top = ranked(&core);
    assert_eq!(top.len(), BUSIEST_TOPICS);
    assert_eq!(top[0].0, "many/29");
    assert_eq!(top[BUSIEST_TOPICS - 1].0, "many/10");
    assert!(top.windows(2).all(|w| w[0].2 >= w[1].2));
    // History, as the last window's pass summed it: "a" keeps 3 of its 4, "many/*" 3 of
    // theirs, the others all of theirs.
    let size = core.history_size();
    assert_eq!(size.messages, 3 + 2 + 1 + 3 + 30 * 3);
    assert!(size.bytes > 0);
}

#[test]
fn history_rules_give_each_topic_pattern_its_own_bounds() {
    let rule = |text: &str| crate::config::HistoryRule::parse(text).unwrap();
    let mut core = owning_core(HistoryPolicy {
        messages: 5,
        ..HistoryPolicy::default()
    })
    .with_history_rules(vec![rule("chat/*=2"), rule("ticks=0"), rule("chat/all=9")]);
    for topic in ["chat/lobby", "ticks", "news"] {
        for i in 0..8u8 {
            publish_tagged(&mut core, topic, 0, Bytes::from(vec![b'0' + i]));
        }
    }
    drain(&mut core);
    // The first matching rule: 2 kept; "ticks" keeps nothing; the rest the default 5.
    assert_eq!(seqs(&core.history("chat/lobby", None, 100)), vec![7, 8]);
    assert!(!core.history("chat/lobby", Some((5, 5)), 100).recovered);
    assert!(core.history("ticks", None, 100).messages.is_empty());
    assert!(!core.history("ticks", Some((5, 7)), 100).recovered);
    assert_eq!(seqs(&core.history("news", None, 100)), vec![4, 5, 6, 7, 8]);
}

#[test]
fn a_recover_is_answered_on_the_topics_lane_and_a_non_owner_says_so() {
    let mut core = owning_core(HistoryPolicy::default());
    publish_tagged(&mut core, "chat", 0, Bytes::from_static(b"1"));
    publish_tagged(&mut core, "chat", 0, Bytes::from_static(b"2"));
    drain(&mut core);
    core.handle_recover(9, "chat", 5, 1, 77);
    match &drain(&mut core)[..] {
        [Command::Recovered {
            edge: 9,
            request_id: 77,
            topic,
            answer,
        }] => {
            assert_eq!(topic, "chat");
            assert!(answer.recovered);
            assert_eq!(answer.current, (5, 2));
            assert_eq!(seqs(answer), vec![2]);
        }
        other => panic!("{other:?}"),
    }
    // The slot moves away: this distributor no longer answers for it.
    core.handle_watch(Instant::now(), move_slot(slot_of("chat"), 2, 6));
    drain(&mut core);
    core.handle_recover(9, "chat", 5, 1, 78);
    match &drain(&mut core)[..] {
        [Command::Recovered { answer, .. }] => {
            assert!(!answer.recovered);
            assert_eq!(answer.current, (0, 0));
        }
        other => panic!("{other:?}"),
    }
}

/// A distributor member as a watch change.
fn distributor_up(id: u64, revision: u64) -> pb::WatchEvent {
    pb::WatchEvent {
        event: Some(pb::watch_event::Event::Delta(pb::Delta {
            revision,
            changes: vec![pb::Change {
                change: Some(pb::change::Change::MemberUp(pb::Member {
                    kind: pb::MemberKind::Distributor as i32,
                    id,
                    incarnation: revision,
                    addrs: [("grpc".to_string(), format!("127.0.0.1:{id}"))].into(),
                    ..pb::Member::default()
                })),
            }],
        })),
    }
}

/// A fenced core (lease 3 s) that owns every slot at epoch 5, its view at revision 5.
fn fenced_owner(now: Instant) -> DistributorCore {
    let mut core = DistributorCore::new(1, 100).with_lease_fencing(Duration::from_secs(3));
    core.handle_registered(1);
    core.handle_watch(now, snapshot(|_| 1, 5, vec![]));
    core
}

#[test]
fn an_owner_sequences_only_within_a_lease_the_metastore_confirmed() {
    let t0 = Instant::now();
    let mut core = fenced_owner(t0);
    // Never confirmed: it may not know of a move.
    assert_eq!(
        core.sequence("chat", 0).unwrap(),
        PublishOutcome::NotOwner { owner: 0 }
    );
    // Confirmed at a revision the view has: sequenced until 3 s after the heartbeat left.
    core.handle_lease_confirmed(t0 + Duration::from_millis(100), t0, 5);
    assert!(matches!(
        core.sequence("chat", 0).unwrap(),
        PublishOutcome::Sequenced { seq: 1, .. }
    ));
    core.handle_timeout(t0 + Duration::from_millis(2999));
    assert!(matches!(
        core.sequence("chat", 0).unwrap(),
        PublishOutcome::Sequenced { seq: 2, .. }
    ));
    // Cut off from the metastore: no confirmation, so it stops when the lease may be gone
    // (the metastore may have moved the slot meanwhile).
    core.handle_timeout(t0 + Duration::from_secs(3));
    assert_eq!(
        core.sequence("chat", 0).unwrap(),
        PublishOutcome::NotOwner { owner: 0 }
    );
    assert_eq!(core.lease_fresh_until(), Some(t0 + Duration::from_secs(3)));
}

#[test]
fn a_confirmation_counts_only_once_the_view_reaches_its_revision() {
    let t0 = Instant::now();
    let mut core = fenced_owner(t0);
    // The metastore was at revision 7 when it answered: something happened this view has
    // not seen (it may be the move of this very slot), so the lease does not count yet.
    core.handle_lease_confirmed(t0, t0, 7);
    assert_eq!(
        core.sequence("chat", 0).unwrap(),
        PublishOutcome::NotOwner { owner: 0 }
    );
    core.handle_watch(t0, distributor_up(3, 6));
    assert_eq!(
        core.sequence("chat", 0).unwrap(),
        PublishOutcome::NotOwner { owner: 0 }
    );
    // Revision 7 moves the topic's slot away: the view knows, and the owner is named.
    let slot = slot_of("chat");
    core.handle_watch(t0, move_slot(slot, 3, 7));
    assert_eq!(
        core.sequence("chat", 0).unwrap(),
        PublishOutcome::NotOwner { owner: 3 }
    );
    // The rest is still its own, and now confirmed.
    assert!(matches!(
        core.sequence("room-1", 0).unwrap(),
        PublishOutcome::Sequenced { seq: 1, .. }
    ));
}

#[test]
fn a_slot_taken_from_a_live_owner_waits_a_lease_and_one_from_a_gone_owner_does_not() {
    let t0 = Instant::now();
    // Distributor 2 owns everything; this is distributor 1, confirmed.
    let mut core = DistributorCore::new(1, 100).with_lease_fencing(Duration::from_secs(3));
    core.handle_registered(1);
    core.handle_watch(t0, snapshot(|_| 2, 5, vec![]));
    core.handle_watch(t0, distributor_up(2, 6));
    core.handle_lease_confirmed(t0, t0, 6);
    // A rebalance gives it "chat"'s slot while 2 is alive: 2 may still sequence it until
    // its own lease fence stops it, at most a lease after the move.
    let chat = slot_of("chat");
    let t1 = t0 + Duration::from_millis(500);
    core.handle_watch(t1, move_slot(chat, 1, 7));
    core.handle_lease_confirmed(t1, t1, 7);
    assert_eq!(
        core.sequence("chat", 0).unwrap(),
        PublishOutcome::NotOwner { owner: 0 }
    );
    core.handle_timeout(t1 + Duration::from_millis(2999));
    core.handle_lease_confirmed(
        t1 + Duration::from_millis(2999),
        t1 + Duration::from_secs(2),
        7,
    );
    assert_eq!(
        core.sequence("chat", 0).unwrap(),
        PublishOutcome::NotOwner { owner: 0 }
    );
    core.handle_timeout(t1 + Duration::from_secs(3));
    assert!(matches!(
        core.sequence("chat", 0).unwrap(),
        PublishOutcome::Sequenced { seq: 1, .. }
    ));
    // Distributor 2 leaves (expired): a slot it owned is taken over at once.
    let room = slot_of("room-1");
    assert_ne!(room, chat);
    let t2 = t1 + Duration::from_secs(3);
    let member_down = pb::Change {
        change: Some(pb::change::Change::MemberDown(pb::MemberRef {
            kind: pb::MemberKind::Distributor as i32,
            id: 2,
        })),
    };
    let mut expiry = move_slot(room, 1, 8);
    if let Some(pb::watch_event::Event::Delta(delta)) = &mut expiry.event {
        delta.changes.insert(0, member_down);
    }
    core.handle_watch(t2, expiry);
    core.handle_lease_confirmed(t2, t2, 8);
    assert!(matches!(
        core.sequence("room-1", 0).unwrap(),
        PublishOutcome::Sequenced {
            seq: 1,
            epoch: 8,
            ..
        }
    ));
}

/// Two fenced cores (lease 3 s): 1 owns every slot at epoch 5 and has sequenced "chat"
/// three times; 2 has just joined. Both views list both members at revision 6.
fn handover_pair(t0: Instant) -> (DistributorCore, DistributorCore) {
    let mut old = fenced_owner(t0);
    let mut new = DistributorCore::new(2, 100).with_lease_fencing(Duration::from_secs(3));
    new.handle_registered(6);
    new.handle_watch(t0, snapshot(|_| 1, 5, vec![]));
    for core in [&mut old, &mut new] {
        core.handle_watch(t0, distributor_up(1, 6));
        core.handle_watch(t0, distributor_up(2, 6));
        core.handle_lease_confirmed(t0, t0, 6);
    }
    for i in 1..=3u8 {
        publish_tagged(&mut old, "chat", 0, Bytes::from(vec![b'0' + i]));
    }
    drain(&mut old);
    drain(&mut new);
    (old, new)
}

/// The Handovers a core asks for: (from, epoch, slots with their epochs under `from`).
type Asked = Vec<(u64, u64, Vec<(Slot, u64)>)>;

fn handovers_asked(core: &mut DistributorCore) -> Asked {
    drain(core)
        .into_iter()
        .filter_map(|c| match c {
            Command::Handover {
                from, epoch, slots, ..
            } => Some((from, epoch, slots)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_slot_moved_to_a_live_member_hands_its_streams_over_and_numbering_goes_on() {
    let t0 = Instant::now();
    let (mut old, mut new) = handover_pair(t0);
    let chat = slot_of("chat");
    // The rebalance at revision 7 moves "chat"'s slot to 2; both views see it.
    let t1 = t0 + Duration::from_millis(100);
    old.handle_watch(t1, move_slot(chat, 2, 7));
    new.handle_watch(t1, move_slot(chat, 2, 7));
    new.handle_lease_confirmed(t1, t1, 7);
    assert_eq!(handovers_asked(&mut new), vec![(1, 7, vec![(chat, 5)])]);
    // Until the answer, the new owner waits (the old one might still be sequencing).
    assert_eq!(
        new.sequence("chat", 0).unwrap(),
        PublishOutcome::NotOwner { owner: 0 }
    );
    let answer = old.handle_handover(t1, 2, 7, &[(chat, 5)]);
    assert_eq!(answer.released, vec![chat]);
    assert_eq!(answer.topics.len(), 1);
    assert_eq!((answer.topics[0].epoch, answer.topics[0].seq), (5, 3));
    assert_eq!(answer.topics[0].history.len(), 3);
    new.handle_handover_answer(t1, 1, 7, Ok(answer));
    // At once, same stream epoch, next seq; and the history came along.
    assert!(matches!(
        new.sequence_run("chat", 0, &[(None, 0, Bytes::from_static(b"4"))], &[]).unwrap(),
        RunOutcome::Sequenced(p) if (p[0].epoch, p[0].seq) == (5, 4)
    ));
    let recovered = new.history("chat", Some((5, 1)), 100);
    assert!(recovered.recovered);
    assert_eq!(seqs(&recovered), vec![2, 3, 4]);
    // A second ask for the same slot finds nothing left to hand over.
    let again = old.handle_handover(t1, 2, 7, &[(chat, 5)]);
    assert!(again.released.is_empty() && again.topics.is_empty());
}

/// A forwarded publish sequenced by the old owner, whose reply was lost, is retried at the
/// new owner: it gets its first position back, not a second one in the same stream (sim
/// seed 127: a split topic's message numbered three times across two handovers).
#[test]
fn a_handover_takes_the_forward_keys_along() {
    let t0 = Instant::now();
    let chat = slot_of("chat");
    let key = (3, 1, 42);
    let run = |core: &mut DistributorCore, data: &'static [u8], key| match core
        .sequence_run("chat", 0, &[(key, 0, Bytes::from_static(data))], &[])
        .unwrap()
    {
        RunOutcome::Sequenced(p) => (p[0].epoch, p[0].seq),
        other => panic!("{other:?}"),
    };
    // The old owner's view shows the move first (it keeps the departing streams), or only
    // the ask proves it.
    for view_first in [true, false] {
        let (mut old, mut new) = handover_pair(t0);
        assert_eq!(run(&mut old, b"4", Some(key)), (5, 4));
        let t1 = t0 + Duration::from_millis(100);
        if view_first {
            old.handle_watch(t1, move_slot(chat, 2, 7));
        }
        new.handle_watch(t1, move_slot(chat, 2, 7));
        new.handle_lease_confirmed(t1, t1, 7);
        let answer = old.handle_handover(t1, 2, 7, &[(chat, 5)]);
        assert_eq!(answer.forwards.len(), 1, "view first: {view_first}");
        new.handle_handover_answer(t1, 1, 7, Ok(answer));
        assert_eq!(run(&mut new, b"4", Some(key)), (5, 4), "the retry");
        assert_eq!(run(&mut new, b"5", None), (5, 5));
        assert_eq!(seqs(&new.history("chat", Some((5, 3)), 100)), vec![4, 5]);
    }
}

#[test]
fn an_old_owner_whose_view_lags_releases_the_slot_when_asked() {
    let t0 = Instant::now();
    let (mut old, _) = handover_pair(t0);
    let chat = slot_of("chat");
    // 2 took the slot at 7; this view has not seen it, yet the ask proves it.
    let answer = old.handle_handover(t0, 2, 7, &[(chat, 5)]);
    assert_eq!(answer.released, vec![chat]);
    assert_eq!((answer.topics[0].epoch, answer.topics[0].seq), (5, 3));
    assert_eq!(
        old.sequence("chat", 0).unwrap(),
        PublishOutcome::NotOwner { owner: 2 }
    );
    assert!(!old.history("chat", None, 10).recovered);
    // A slot it lost at a later epoch than asked is not released.
    let other = slot_of("room-1");
    old.handle_watch(t0, move_slot(other, 2, 9));
    assert!(old
        .handle_handover(t0, 2, 8, &[(other, 5)])
        .released
        .is_empty());
    // Once the view shows the move, the early release is forgotten.
    old.handle_watch(t0, move_slot(chat, 2, 10));
    assert_eq!(
        old.sequence("chat", 0).unwrap(),
        PublishOutcome::NotOwner { owner: 2 }
    );
}

/// Sim seed 716205: "chat"'s slot went 1@5 → 3@6 (which started a stream of its own) → 1@7
/// → 2@8 while 1's view showed none of it. 2's ask names 1's reign 7, not the reign 5 that
/// 1's stream numbers in: the slot is released without that stream, which is older than
/// 3's, and 2 starts a newer one instead of continuing the old one past 3's messages.
#[test]
fn a_lagging_owner_hands_over_no_stream_of_an_older_reign_than_asked() {
    let t0 = Instant::now();
    let (mut old, _) = handover_pair(t0);
    let chat = slot_of("chat");
    let answer = old.handle_handover(t0, 2, 8, &[(chat, 7)]);
    assert_eq!(answer.released, vec![chat]);
    assert!(answer.topics.is_empty(), "{:?}", answer.topics);
    assert_eq!(
        old.sequence("chat", 0).unwrap(),
        PublishOutcome::NotOwner { owner: 2 }
    );
    // Asked for the reign its stream numbers in, it hands that stream over.
    let (mut old, _) = handover_pair(t0);
    let answer = old.handle_handover(t0, 2, 8, &[(chat, 5)]);
    assert_eq!((answer.topics[0].epoch, answer.topics[0].seq), (5, 3));
    // The same for streams kept after the view showed the move: 1 lost the slot at 6 to
    // 2, which (say) asks for a later move naming another reign.
    let (mut old, _) = handover_pair(t0);
    old.handle_watch(t0, move_slot(chat, 2, 6));
    assert!(old
        .handle_handover(t0, 2, 6, &[(chat, 4)])
        .topics
        .is_empty());
    let answer = old.handle_handover(t0, 2, 6, &[(chat, 5)]);
    assert_eq!((answer.topics[0].epoch, answer.topics[0].seq), (5, 3));
}

#[test]
fn without_an_answer_the_new_owner_waits_a_lease_and_starts_a_new_stream() {
    let t0 = Instant::now();
    let (_, mut new) = handover_pair(t0);
    let chat = slot_of("chat");
    new.handle_watch(t0, move_slot(chat, 2, 7));
    new.handle_lease_confirmed(t0, t0, 7);
    drain(&mut new);
    new.handle_handover_answer(t0, 1, 7, Err("connection refused".into()));
    assert_eq!(
        new.sequence("chat", 0).unwrap(),
        PublishOutcome::NotOwner { owner: 0 }
    );
    let t1 = t0 + Duration::from_secs(3);
    new.handle_timeout(t1);
    new.handle_lease_confirmed(t1, t1, 7);
    assert!(matches!(
        new.sequence("chat", 0).unwrap(),
        PublishOutcome::Sequenced {
            epoch: 7,
            seq: 1,
            ..
        }
    ));
}

/// A draining owner is done only once its view shows it owning nothing and the new owner
/// has taken the streams it kept (issue 16: the node stops serving after that).
#[test]
fn a_draining_owner_is_drained_once_its_slots_moved_and_their_streams_were_taken() {
    let t0 = Instant::now();
    let (mut old, _) = handover_pair(t0);
    let chat = slot_of("chat");
    assert!(!old.drained(), "it owns every slot");
    // The drain: the metastore moves every slot to 2 at revision 7, in one delta.
    let changes = (0..firetower_proto::SLOT_COUNT as u32)
        .map(|slot| pb::Change {
            change: Some(pb::change::Change::SlotOwner(pb::SlotOwnerChange {
                slot,
                distributor_id: 2,
                epoch: 7,
            })),
        })
        .collect();
    old.handle_watch(
        t0,
        pb::WatchEvent {
            event: Some(pb::watch_event::Event::Delta(pb::Delta {
                revision: 7,
                changes,
            })),
        },
    );
    drain(&mut old);
    assert!(!old.drained(), "chat's stream waits for 2's Handover");
    let answer = old.handle_handover(t0, 2, 7, &[(chat, 5)]);
    assert_eq!((answer.topics[0].epoch, answer.topics[0].seq), (5, 3));
    assert!(old.drained());
}
