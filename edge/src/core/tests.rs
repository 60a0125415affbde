use super::*;
use firetower_proto::relay::v1::Recovered;
use firetower_proto::SLOT_COUNT;

fn snapshot(owner: u64, epoch: u64) -> pb::WatchEvent {
    pb::WatchEvent {
        event: Some(pb::watch_event::Event::Snapshot(pb::SlotMap {
            revision: epoch,
            members: vec![pb::Member {
                kind: pb::MemberKind::Distributor as i32,
                id: owner,
                addrs: Default::default(),
                lease_ttl_ms: 1000,
                incarnation: 1,
            }],
            slot_owner: vec![owner; SLOT_COUNT],
            slot_epoch: vec![epoch; SLOT_COUNT],
            slot_edges: vec![],
            hot_topics: vec![],
        })),
    }
}

fn drain(core: &mut EdgeCore) -> Vec<Output> {
    std::iter::from_fn(|| core.poll_output()).collect()
}

/// One delivery: what it emits must be at most one [`Output::Deliver`], returned.
fn deliver(
    core: &mut EdgeCore,
    name: &str,
    epoch: u64,
    seq: u64,
    data: &'static [u8],
    tags: MessageTags,
) -> Option<Fanout> {
    core.handle_deliver(name, epoch, seq, Bytes::from_static(data), tags);
    match &drain(core)[..] {
        [] => None,
        [Output::Deliver(fanout)] => Some(fanout.clone()),
        other => panic!("a delivery emitted {other:?}"),
    }
}

fn interest(topic: &str, subscribers: u64, epoch: u64) -> Output {
    Output::Relay {
        distributor: 1,
        frame: RelayFrame {
            frame: Some(Frame::Interest(Interest {
                topic: topic.into(),
                subscribers,
                epoch,
                route_since: 0,
                passed_epoch: 0,
                passed_seq: 0,
            })),
        },
    }
}

fn linked_core() -> EdgeCore {
    let mut core = EdgeCore::new(7, 3, Duration::from_secs(5));
    core.handle_watch(Instant::now(), snapshot(1, 4));
    assert_eq!(drain(&mut core), vec![Output::Connect { distributor: 1 }]);
    core.handle_link_up(1);
    let out = drain(&mut core);
    assert!(out.iter().all(|o| matches!(
        o,
        Output::Relay {
            frame: RelayFrame {
                frame: Some(Frame::SlotsSynced(_))
            },
            ..
        }
    )));
    core
}

#[test]
fn subscribe_is_acked_after_the_owner_acks_interest() {
    let now = Instant::now();
    let mut core = linked_core();
    core.handle_subscribe(now, 10, vec!["chat".into()]);
    assert_eq!(drain(&mut core), vec![interest("chat", 1, 4)]);
    assert!(
        deliver(&mut core, "chat", 4, 1, b"1", MessageTags::default()).is_none(),
        "not acked yet"
    );
    core.handle_interest_ack(1, "chat", 4);
    assert_eq!(
        drain(&mut core),
        vec![Output::Subscribed {
            conn: 10,
            topics: vec!["chat".into()]
        }]
    );
    // A second subscriber is acked at once; the count goes out on the next tick.
    core.handle_subscribe(now, 11, vec!["chat".into()]);
    assert_eq!(
        drain(&mut core),
        vec![Output::Subscribed {
            conn: 11,
            topics: vec!["chat".into()]
        }]
    );
    core.handle_tick(now);
    // With the position this edge saw of the stream (for an owner that newly records it).
    let mut update = interest("chat", 2, 4);
    if let Output::Relay {
        frame: RelayFrame {
            frame: Some(Frame::Interest(i)),
        },
        ..
    } = &mut update
    {
        (i.passed_epoch, i.passed_seq) = (4, 1);
    }
    assert_eq!(drain(&mut core), vec![update]);
    let fan = deliver(
        &mut core,
        "chat",
        4,
        2,
        br#"{"a":1}"#,
        MessageTags::default(),
    )
    .unwrap();
    assert_eq!(&fan.conns[..], [10, 11]);
    assert_eq!(
        fan.json(),
        br#"{"type":"publish","topic":"chat","data":{"a":1},"epoch":4,"seq":2}"#
    );
    // Stale and duplicate deliveries are dropped.
    assert!(deliver(&mut core, "chat", 4, 2, b"1", MessageTags::default()).is_none());
    assert!(deliver(&mut core, "chat", 3, 9, b"1", MessageTags::default()).is_none());
    assert_eq!(core.counters().stale_deliveries, 2);
    // A newer epoch restarts seq.
    assert!(deliver(&mut core, "chat", 5, 1, b"1", MessageTags::default()).is_some());
}

#[test]
fn last_unsubscribe_withdraws_interest_and_disconnect_cleans_up() {
    let now = Instant::now();
    let mut core = linked_core();
    core.handle_subscribe(now, 10, vec!["a".into(), "b".into()]);
    drain(&mut core);
    core.handle_interest_ack(1, "a", 4);
    core.handle_interest_ack(1, "b", 4);
    drain(&mut core);
    assert_eq!(core.interest_slots().count(), 2);
    core.handle_unsubscribe(10, vec!["a".into(), "zzz".into()]);
    assert_eq!(
        drain(&mut core),
        vec![
            interest("a", 0, 4),
            Output::Unsubscribed {
                conn: 10,
                topics: vec!["a".into(), "zzz".into()]
            },
            Output::Left {
                conn: 10,
                topics: vec!["a".into()]
            },
        ]
    );
    core.handle_disconnect(Instant::now(), 10);
    assert_eq!(
        drain(&mut core),
        vec![
            interest("b", 0, 4),
            Output::Left {
                conn: 10,
                topics: vec!["b".into()]
            },
        ]
    );
    // A connection that held nothing leaves without a hook call.
    core.handle_disconnect(Instant::now(), 10);
    assert_eq!(drain(&mut core), vec![]);
    assert_eq!(core.interest_slots().count(), 0);
    assert!(deliver(&mut core, "b", 4, 1, b"1", MessageTags::default()).is_none());
}

#[test]
fn per_connection_topic_limit_and_subscribe_timeout() {
    let now = Instant::now();
    let mut core = EdgeCore::new(7, 3, Duration::from_secs(5));
    // No distributor at all: the subscribe waits, then fails.
    core.handle_subscribe(
        now,
        10,
        vec!["a".into(), "b".into(), "c".into(), "d".into()],
    );
    let out = drain(&mut core);
    assert!(matches!(
        &out[..],
        [Output::SubscribeFailed { conn: 10, error }] if error.code == ErrorCode::TooManyTopics
    ));
    core.handle_tick(now + Duration::from_secs(6));
    let out = drain(&mut core);
    assert!(matches!(
        &out[..],
        [Output::SubscribeFailed { conn: 10, error }] if error.code == ErrorCode::Unavailable
    ));
    assert_eq!(core.conn_topics(10), 0);
    assert_eq!(core.interest_slots().count(), 0);
}

#[test]
fn an_owner_change_re_announces_to_the_new_owner() {
    let now = Instant::now();
    let mut core = linked_core();
    core.handle_subscribe(now, 10, vec!["chat".into()]);
    core.handle_interest_ack(1, "chat", 4);
    drain(&mut core);
    core.handle_link_up(2);
    drain(&mut core);
    let slot = slot_of("chat");
    core.handle_watch(
        Instant::now(),
        pb::WatchEvent {
            event: Some(pb::watch_event::Event::Delta(pb::Delta {
                revision: 9,
                changes: vec![pb::Change {
                    change: Some(pb::change::Change::SlotOwner(pb::SlotOwnerChange {
                        slot: slot.into(),
                        distributor_id: 2,
                        epoch: 9,
                    })),
                }],
            })),
        },
    );
    assert_eq!(
        drain(&mut core),
        vec![
            Output::Relay {
                distributor: 2,
                frame: RelayFrame {
                    frame: Some(Frame::Interest(Interest {
                        topic: "chat".into(),
                        subscribers: 1,
                        epoch: 9,
                        route_since: 0,
                        passed_epoch: 0,
                        passed_seq: 0,
                    }))
                }
            },
            Output::Relay {
                distributor: 2,
                frame: RelayFrame {
                    frame: Some(Frame::SlotsSynced(SlotsSynced {
                        slots: vec![slot.into()],
                        epochs: vec![9]
                    }))
                }
            }
        ]
    );
    // The subscriber stays effective across the move.
    assert_eq!(
        deliver(&mut core, "chat", 9, 1, b"1", MessageTags::default())
            .unwrap()
            .conns[..],
        [10]
    );
}

#[test]
fn slot_sync_diffs_and_resets() {
    let mut sync = SlotSync::default();
    assert_eq!(
        sync.next_batch([1u16, 2].into_iter()),
        Some((vec![1, 2], vec![]))
    );
    sync.confirm(&[1, 2], &[]);
    assert_eq!(
        sync.next_batch([2u16, 3].into_iter()),
        Some((vec![3], vec![1]))
    );
    sync.confirm(&[3], &[1]);
    assert_eq!(sync.next_batch([2u16, 3].into_iter()), None);
    sync.reset();
    assert_eq!(
        sync.next_batch([2u16, 3].into_iter()),
        Some((vec![2, 3], vec![]))
    );
}

/// A linked core whose connection 10 is subscribed to "live" (acked by owner 1 at epoch 4).
fn live_core(now: Instant) -> EdgeCore {
    let mut core = linked_core();
    core.handle_subscribe(now, 10, vec!["live".into()]);
    core.handle_interest_ack(1, "live", 4);
    drain(&mut core);
    core
}

fn hot(
    topic: &str,
    shards: u32,
    prev_shards: u32,
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
                    prev_shards,
                    since,
                    committed,
                    revision,
                })),
            }],
        })),
    }
}

fn tags(msg_id: u64, route_tag: u64) -> MessageTags {
    MessageTags {
        msg_id,
        route_tag,
        canon: (0, 0),
    }
}

/// Tags of a sub-topic delivery: the message's position in the topic's stream (epoch 4).
fn ct(msg_id: u64, route_tag: u64, seq: u64) -> MessageTags {
    MessageTags {
        msg_id,
        route_tag,
        canon: (4, seq),
    }
}

/// (epoch, seq, data) of a delivery frame.
fn parsed(f: &Fanout) -> (u64, u64, String) {
    let v: serde_json::Value = serde_json::from_slice(f.json()).unwrap();
    (
        v["epoch"].as_u64().unwrap(),
        v["seq"].as_u64().unwrap(),
        v["data"].to_string(),
    )
}

fn delivered(out: Vec<Output>) -> Vec<(u64, u64, String)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Deliver(f) => Some(parsed(f)),
            _ => None,
        })
        .collect()
}

/// A split while messages flow: the old route delivers what only it carries, holds what
/// the new one carries too, and the switch (after commit and fence) passes the held
/// messages on in the topic's order (the positions its owner gave them), each once.
#[test]
fn a_split_switches_routes_without_loss_duplicates_or_reordering() {
    let now = Instant::now();
    let mut core = live_core(now);
    let f = deliver(&mut core, "live", 4, 1, b"1", tags(1, 0)).unwrap();
    assert_eq!(
        parsed(&f),
        (4, 1, "1".into()),
        "owner numbering passes through"
    );

    // Prepared at revision 5: the edge joins its one sub-topic and acks once its owner has.
    core.handle_watch(now, hot("live", 4, 0, 5, false, 5));
    let sub = edge_route_topic(7, "live", 4);
    let out = drain(&mut core);
    assert!(out.iter().any(|o| matches!(o, Output::Relay { frame: RelayFrame { frame: Some(Frame::Interest(i)) }, .. } if i.topic == sub && i.route_since == 5)));
    core.handle_tick(now);
    assert!(!drain(&mut core)
        .iter()
        .any(|o| matches!(o, Output::AckHot { .. })));
    core.handle_interest_ack(1, &sub, 4);
    core.handle_tick(now);
    assert!(drain(&mut core).contains(&Output::AckHot {
        topic: "live".into(),
        since: 5
    }));

    // Old-view message 2 (tag 0) passes at once; dual message 3 (tag 5) comes on both
    // routes and is held on both; message 4 (committed view) only on the new route.
    assert!(deliver(&mut core, "live", 4, 2, b"2", tags(2, 0)).is_some());
    assert!(deliver(&mut core, &sub, 4, 1, b"3", ct(3, 5, 3)).is_none());
    assert!(deliver(&mut core, &sub, 4, 2, b"4", ct(4, 6, 4)).is_none());
    assert!(deliver(&mut core, "live", 4, 3, b"3", tags(3, 5)).is_none());
    // Committed at 6, but the old route is not fenced that far yet: no switch.
    core.handle_watch(now, hot("live", 4, 0, 5, true, 6));
    core.handle_fence("live", 5);
    assert_eq!(delivered(drain(&mut core)), vec![]);
    // Fenced at the commit: the held messages come in the new route's order, once.
    core.handle_fence("live", 6);
    let out = drain(&mut core);
    assert_eq!(
        delivered(out.clone()),
        vec![(4, 3, "3".into()), (4, 4, "4".into())],
        "the topic's own numbering goes on across the split"
    );
    assert!(
        out.contains(&interest("live", 0, 4)),
        "the old name is withdrawn"
    );
    let f = deliver(&mut core, &sub, 4, 3, b"5", ct(5, 6, 5)).unwrap();
    assert_eq!(parsed(&f), (4, 5, "5".into()));
    // A late second copy (a retried fan-out) is dropped, like 3's copy at the switch.
    assert!(deliver(&mut core, &sub, 4, 4, b"5", ct(5, 6, 5)).is_none());
    assert_eq!(core.counters().duplicate_deliveries, 2);
    assert_eq!(core.counters().route_switches, 1);
    assert_eq!(core.counters().forced_switches, 0);
}

/// A change whose old route is never fenced (its owner is gone) is forced through after
/// SWITCH_TIMEOUT, passing on what only the old route held.
#[test]
fn a_stuck_change_is_forced_through_after_the_timeout() {
    let now = Instant::now();
    let mut core = linked_core();
    core.handle_subscribe(now, 10, vec!["live".into()]);
    core.handle_interest_ack(1, "live", 4);
    core.handle_watch(now, hot("live", 2, 0, 5, false, 5));
    let sub = edge_route_topic(7, "live", 2);
    core.handle_interest_ack(1, &sub, 4);
    core.handle_watch(now, hot("live", 2, 0, 5, true, 6));
    drain(&mut core);
    assert!(deliver(&mut core, "live", 4, 1, b"1", tags(1, 5)).is_none());
    core.handle_tick(now + SWITCH_TIMEOUT - Duration::from_millis(1));
    assert_eq!(delivered(drain(&mut core)), vec![]);
    core.handle_tick(now + SWITCH_TIMEOUT);
    assert_eq!(delivered(drain(&mut core)).len(), 1);
    assert_eq!(core.counters().forced_switches, 1);
}

/// An edge whose view lags a split it missed the start of: message 1 never reached it on
/// the old route (cut off), message 2 of the same publisher, routed by the prepared split
/// (tag 5), comes on the old route before this edge has seen the split. It must wait: the
/// new route's owner replays 1 before 2 once the edge joins, and the switch passes both in
/// that order (sim seeds 126851, 126944); 9, after them in the topic, waits behind them.
#[test]
fn a_delivery_routed_by_a_newer_view_waits_for_this_edges_view() {
    let now = Instant::now();
    let mut core = live_core(now);
    // Older views pass at once.
    assert!(deliver(&mut core, "live", 4, 1, b"0", tags(10, 0)).is_some());
    assert!(deliver(&mut core, "live", 4, 3, b"2", tags(2, 5)).is_none());
    // The topic's later deliveries wait behind it, whatever their tag.
    assert!(deliver(&mut core, "live", 4, 4, b"9", tags(11, 0)).is_none());
    core.handle_tick(now);
    assert_eq!(delivered_data(&mut core), Vec::<String>::new());
    // The view catches up: 2 is held on the old route (the new one carries it too), 9
    // (an older view's) waits for 1 and 2, which come before it in the topic.
    core.handle_watch(now, hot("live", 2, 0, 5, false, 5));
    let sub = edge_route_topic(7, "live", 2);
    assert_eq!(delivered_data(&mut core), Vec::<String>::new());
    core.handle_interest_ack(1, &sub, 4);
    // The new route's owner replays 1 and 2.
    assert!(deliver(&mut core, &sub, 4, 1, b"1", ct(1, 5, 2)).is_none());
    assert!(deliver(&mut core, &sub, 4, 2, b"2", ct(2, 5, 3)).is_none());
    core.handle_watch(now, hot("live", 2, 0, 5, true, 6));
    core.handle_fence("live", 6);
    assert_eq!(delivered_data(&mut core), vec!["1", "2", "9"]);
    assert_eq!(core.counters().forced_switches, 0);
}

/// Deliveries that wait for this edge's view wait as long as it lags (an edge cut off
/// from the metastore for longer than SWITCH_TIMEOUT: passing them on then would reorder
/// them once the view comes back with the split, sim seed 126851), and go on, in order,
/// when it catches up, also when the change does not move this edge's route.
#[test]
fn deliveries_wait_for_a_lagging_view_however_long_and_pass_when_it_catches_up() {
    let now = Instant::now();
    let mut core = live_core(now);
    assert!(deliver(&mut core, "live", 4, 1, b"1", tags(1, 5)).is_none());
    assert!(deliver(&mut core, "live", 4, 2, b"2", tags(2, 0)).is_none());
    core.handle_tick(now);
    core.handle_tick(now + SWITCH_TIMEOUT * 3);
    assert_eq!(delivered_data(&mut core), Vec::<String>::new());
    // The change at 5 was a merge of a topic this edge saw as plain: the route stays.
    core.handle_watch(now, hot("live", 0, 0, 5, true, 5));
    assert_eq!(delivered_data(&mut core), vec!["1", "2"]);
    // Nothing waits any more: the next one passes at once.
    assert!(deliver(&mut core, "live", 4, 3, b"3", tags(3, 5)).is_some());
}

/// A core with one subscriber of "live", whose split into 2 (tag 5) is prepared and both
/// routes acked: returns it and the edge's new sub-topic.
fn prepared_split(now: Instant) -> (EdgeCore, String) {
    let mut core = linked_core();
    core.handle_subscribe(now, 10, vec!["live".into()]);
    core.handle_interest_ack(1, "live", 4);
    core.handle_watch(now, hot("live", 2, 0, 5, false, 5));
    let sub = edge_route_topic(7, "live", 2);
    core.handle_interest_ack(1, &sub, 4);
    drain(&mut core);
    (core, sub)
}

/// The data of the deliveries the core has output since the last drain.
fn delivered_data(core: &mut EdgeCore) -> Vec<String> {
    delivered(drain(core))
        .into_iter()
        .map(|(_, _, data)| data)
        .collect()
}

/// A forced switch merges both routes' held deliveries: the next route's order for what
/// it has (including its owner's replay of what came before the edge joined, which the
/// first route missed), what only the first route held in its place, and what only the
/// next route got after the last shared message at the end.
#[test]
fn a_forced_switch_merges_both_routes_held_deliveries() {
    let now = Instant::now();
    let (mut core, sub) = prepared_split(now);
    // Message 1 never reached the old route here (the link was down); 2 and 3 came on it.
    assert!(deliver(&mut core, "live", 4, 2, b"2", tags(2, 5)).is_none());
    assert!(deliver(&mut core, "live", 4, 3, b"3", tags(3, 5)).is_none());
    // The new route's owner replays 1 and 2, and then 4 comes; 3 is lost on this route.
    assert!(deliver(&mut core, &sub, 4, 1, b"1", ct(1, 5, 1)).is_none());
    assert!(deliver(&mut core, &sub, 4, 2, b"2", ct(2, 5, 2)).is_none());
    assert!(deliver(&mut core, &sub, 4, 3, b"4", ct(4, 5, 4)).is_none());
    core.handle_tick(now + SWITCH_TIMEOUT);
    let got = delivered_data(&mut core);
    assert_eq!(got, vec!["1", "2", "3", "4"]);
    assert_eq!(core.counters().forced_switches, 1);
}

/// A forced switch keeps the first route's order too: a message the first route held
/// before one both carry comes before it, even when the next route never got it.
#[test]
fn a_forced_switch_keeps_the_first_routes_order_for_what_the_next_route_lacks() {
    let now = Instant::now();
    let (mut core, sub) = prepared_split(now);
    // 1 and 2 on the old route; only 2 (and then 3) reached the new one.
    assert!(deliver(&mut core, "live", 4, 1, b"1", tags(1, 5)).is_none());
    assert!(deliver(&mut core, "live", 4, 2, b"2", tags(2, 5)).is_none());
    assert!(deliver(&mut core, &sub, 4, 1, b"2", ct(2, 5, 2)).is_none());
    assert!(deliver(&mut core, &sub, 4, 2, b"3", ct(3, 5, 3)).is_none());
    core.handle_tick(now + SWITCH_TIMEOUT);
    let got = delivered_data(&mut core);
    assert_eq!(got, vec!["1", "2", "3"]);
    assert_eq!(core.counters().forced_switches, 1);
}

/// Split, merge and split again before the edge switched: the sub-topic is in the route
/// list twice, and a delivery on it belongs to the route its tag knew of. One tagged with
/// the second split waits for that route; it is not held by (and dropped with) the first.
#[test]
fn a_name_twice_in_the_route_list_takes_each_delivery_by_its_tag() {
    let now = Instant::now();
    let mut core = linked_core();
    core.handle_subscribe(now, 10, vec!["live".into()]);
    core.handle_interest_ack(1, "live", 4);
    let sub = edge_route_topic(7, "live", 2);
    core.handle_watch(now, hot("live", 2, 0, 5, false, 5));
    core.handle_interest_ack(1, &sub, 4);
    core.handle_watch(now, hot("live", 2, 0, 5, true, 6));
    core.handle_fence("live", 6);
    // Merge prepared and committed; the edge has not switched back yet (sub not fenced).
    core.handle_watch(now, hot("live", 0, 2, 8, false, 8));
    core.handle_interest_ack(1, "live", 4);
    core.handle_watch(now, hot("live", 0, 2, 8, true, 9));
    // Split again, onto the same sub-topic.
    core.handle_watch(now, hot("live", 2, 0, 11, false, 11));
    drain(&mut core);
    assert!(deliver(&mut core, &sub, 4, 1, b"1", tags(1, 6)).is_some());
    assert!(deliver(&mut core, &sub, 4, 2, b"3", tags(3, 11)).is_none());
    core.handle_fence(&sub, 9);
    assert_eq!(delivered(drain(&mut core)), vec![]);
    core.handle_watch(now, hot("live", 2, 0, 11, true, 12));
    core.handle_fence("live", 12);
    let got = delivered_data(&mut core);
    assert_eq!(got, vec!["3"]);
    assert_eq!(core.counters().forced_switches, 0);
}

/// Two changes seen late: the topic's routes are `live`, then the first split's sub-topic,
/// then the second's. When the first switch happens, the middle route keeps holding what
/// was published by a view that knew the last route: the last route carries it too, in its
/// owner's order, which may put other messages before it.
#[test]
fn a_route_that_becomes_first_keeps_holding_what_the_next_route_carries() {
    let now = Instant::now();
    let mut core = linked_core();
    core.handle_subscribe(now, 10, vec!["live".into()]);
    core.handle_interest_ack(1, "live", 4);
    let first = edge_route_topic(7, "live", 2);
    let shards = (3..=16)
        .find(|n| edge_route_topic(7, "live", *n) != first)
        .unwrap();
    let second = edge_route_topic(7, "live", shards);
    core.handle_watch(now, hot("live", 2, 0, 5, false, 5));
    core.handle_watch(now, hot("live", 2, 0, 5, true, 6));
    core.handle_watch(now, hot("live", shards, 2, 7, false, 7));
    core.handle_interest_ack(1, &first, 4);
    core.handle_interest_ack(1, &second, 4);
    drain(&mut core);
    // A = 10 (tag 7) reached the second route only (replayed there); B = 20 (tag 7) both.
    assert!(deliver(&mut core, &second, 4, 1, b"10", ct(1, 7, 1)).is_none());
    assert!(deliver(&mut core, &first, 4, 1, b"20", ct(2, 7, 2)).is_none());
    assert!(deliver(&mut core, &second, 4, 2, b"20", ct(2, 7, 2)).is_none());
    // The first switch passes nothing: B waits for the second route.
    core.handle_fence("live", 6);
    assert_eq!(delivered(drain(&mut core)), vec![]);
    core.handle_watch(now, hot("live", shards, 2, 7, true, 8));
    core.handle_fence(&first, 8);
    let got = delivered_data(&mut core);
    assert_eq!(got, vec!["10", "20"], "A then B, each once");
    assert_eq!(core.counters().route_switches, 2);
}

/// The hot path reports through the queue like every other input: one `Deliver` per
/// message, the frame built once, the recipient list shared until the subscribers change.
#[test]
fn a_delivery_is_one_output_with_a_shared_recipient_list() {
    let now = Instant::now();
    let mut core = linked_core();
    core.handle_subscribe(now, 10, vec!["chat".into()]);
    core.handle_subscribe(now, 11, vec!["chat".into()]);
    core.handle_interest_ack(1, "chat", 4);
    drain(&mut core);
    core.handle_deliver("chat", 4, 1, Bytes::from_static(b"1"), tags(1, 0));
    core.handle_deliver("chat", 4, 2, Bytes::from_static(b"2"), tags(2, 0));
    let out = drain(&mut core);
    let [Output::Deliver(a), Output::Deliver(b)] = &out[..] else {
        panic!("expected two deliveries, got {out:?}");
    };
    assert_eq!(
        a.frame,
        crate::frame::text_frame(&firetower_proto::client::encode_delivery("chat", "1", 4, 1))
    );
    assert_eq!(&a.conns[..], [10, 11]);
    assert!(Arc::ptr_eq(&a.conns, &b.conns), "one list for both");
    // A new subscriber: the next delivery has a new list, which includes it.
    core.handle_subscribe(now, 12, vec!["chat".into()]);
    assert_eq!(
        drain(&mut core),
        vec![Output::Subscribed {
            conn: 12,
            topics: vec!["chat".into()]
        }]
    );
    let c = deliver(&mut core, "chat", 4, 3, b"3", tags(3, 0)).unwrap();
    assert_eq!(&c.conns[..], [10, 11, 12]);
    // One that leaves: gone from the next list.
    core.handle_unsubscribe(11, vec!["chat".into()]);
    drain(&mut core);
    let d = deliver(&mut core, "chat", 4, 4, b"4", tags(4, 0)).unwrap();
    assert_eq!(&d.conns[..], [10, 12]);
    // Not UTF-8: counted, nothing emitted.
    assert!(deliver(&mut core, "chat", 4, 5, b"\xff", tags(5, 0)).is_none());
    assert_eq!(core.counters().bad_deliveries, 1);
}

/// A fence and deliveries handled in one burst (one lock, one drain): the held
/// deliveries the fence releases come out ahead of the burst's later deliveries.
#[test]
fn a_burst_keeps_released_deliveries_ahead_of_later_ones() {
    let now = Instant::now();
    let mut core = linked_core();
    core.handle_subscribe(now, 10, vec!["live".into()]);
    core.handle_interest_ack(1, "live", 4);
    core.handle_watch(now, hot("live", 4, 0, 5, false, 5));
    let sub = edge_route_topic(7, "live", 4);
    core.handle_interest_ack(1, &sub, 4);
    core.handle_watch(now, hot("live", 4, 0, 5, true, 6));
    drain(&mut core);
    // Held on the new route until the old one is fenced.
    assert!(deliver(&mut core, &sub, 4, 1, b"1", ct(1, 5, 1)).is_none());
    // One burst: the fence completes the switch, then the new route delivers again.
    core.handle_fence("live", 6);
    core.handle_deliver(&sub, 4, 2, Bytes::from_static(b"2"), ct(2, 6, 2));
    core.handle_deliver("live", 4, 9, Bytes::from_static(b"9"), tags(9, 0));
    let out = drain(&mut core);
    assert_eq!(
        delivered(out.clone()),
        vec![(4, 1, "1".into()), (4, 2, "2".into())]
    );
    // The old name was withdrawn before the later delivery: nothing came of it.
    assert!(out.contains(&interest("live", 0, 4)));
    assert_eq!(core.counters().unwanted_deliveries, 1);
}

// Client publishes (core/publish.rs).

fn move_slot(core: &mut EdgeCore, topic: &str, to: u64, epoch: u64) {
    core.handle_watch(
        Instant::now(),
        pb::WatchEvent {
            event: Some(pb::watch_event::Event::Delta(pb::Delta {
                revision: epoch,
                changes: vec![pb::Change {
                    change: Some(pb::change::Change::SlotOwner(pb::SlotOwnerChange {
                        slot: slot_of(topic).into(),
                        distributor_id: to,
                        epoch,
                    })),
                }],
            })),
        },
    );
}

/// The client publishes among `out`, as (distributor, id, topic, data).
fn publishes(out: &[Output]) -> Vec<(u64, u64, String, String)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Relay {
                distributor,
                frame:
                    RelayFrame {
                        frame: Some(Frame::ClientPublish(p)),
                    },
            } => Some((
                *distributor,
                p.id,
                p.topic.clone(),
                String::from_utf8_lossy(&p.data).into_owned(),
            )),
            _ => None,
        })
        .collect()
}

fn publish(core: &mut EdgeCore, now: Instant, conn: ConnId, topic: &str, data: &'static str) {
    core.handle_client_publish(
        now,
        conn,
        topic.into(),
        Bytes::from_static(data.as_bytes()),
        None,
    );
}

#[test]
fn a_publish_is_numbered_per_link_and_an_error_answer_reaches_its_publisher() {
    let now = Instant::now();
    let mut core = linked_core();
    publish(&mut core, now, 10, "chat", "1");
    publish(&mut core, now, 11, "chat", "2");
    assert_eq!(
        publishes(&drain(&mut core)),
        vec![
            (1, 1, "chat".into(), "1".into()),
            (1, 2, "chat".into(), "2".into())
        ]
    );
    // Sequenced: nothing to say to a client that did not number its publish.
    core.handle_publish_done(now, 1, 1, "", "", (0, 0));
    assert_eq!(drain(&mut core), vec![]);
    core.handle_publish_done(now, 1, 2, "overloaded", "the lanes stayed full", (0, 0));
    assert_eq!(
        drain(&mut core),
        vec![Output::PublishFailed {
            conn: 11,
            error: ClientError::new(ErrorCode::Overloaded, "the lanes stayed full")
                .with_topic("chat"),
        }]
    );
    // A second answer, or one from another link, matches nothing.
    core.handle_publish_done(now, 1, 2, "", "", (0, 0));
    core.handle_publish_done(now, 2, 1, "", "", (0, 0));
    assert_eq!(drain(&mut core), vec![]);
    assert_eq!(core.publish_counters().unmatched_answers, 2);
    assert_eq!(core.publish_counters().failed, 1);
}

/// A client that numbers its publishes (`"id"`) gets each one answered: its position, or
/// the error carrying its number.
#[test]
fn a_numbered_publish_is_answered_with_its_position_or_its_error() {
    let now = Instant::now();
    let mut core = linked_core();
    core.handle_client_publish(now, 10, "chat".into(), Bytes::from_static(b"1"), Some(7));
    core.handle_client_publish(now, 10, "chat".into(), Bytes::from_static(b"2"), Some(8));
    drain(&mut core);
    core.handle_publish_done(now, 1, 1, "", "", (3, 41));
    core.handle_publish_done(now, 1, 2, "overloaded", "the lanes stayed full", (0, 0));
    assert_eq!(
        drain(&mut core),
        vec![
            Output::Published {
                conn: 10,
                id: 7,
                topic: "chat".into(),
                epoch: 3,
                seq: 41,
            },
            Output::PublishFailed {
                conn: 10,
                error: ClientError::new(ErrorCode::Overloaded, "the lanes stayed full")
                    .with_topic("chat")
                    .with_id(Some(8)),
            }
        ]
    );
}

#[test]
fn publishes_beyond_the_in_flight_bound_pause_their_publishers_until_answers_make_room() {
    let now = Instant::now();
    let mut core = linked_core().with_publish_limits(2, Duration::from_secs(15));
    publish(&mut core, now, 10, "a", "1");
    publish(&mut core, now, 10, "a", "2");
    assert_eq!(publishes(&drain(&mut core)).len(), 2);
    // The link is full: the publisher's reading stops; so does another publisher's.
    publish(&mut core, now, 10, "a", "3");
    assert_eq!(drain(&mut core), vec![Output::PauseReads { conn: 10 }]);
    publish(&mut core, now, 11, "b", "4");
    assert_eq!(drain(&mut core), vec![Output::PauseReads { conn: 11 }]);
    assert_eq!(core.publish_counters().held, 2);
    // Each answer lets the next waiting publish go, in arrival order.
    core.handle_publish_done(now, 1, 1, "", "", (0, 0));
    let out = drain(&mut core);
    assert_eq!(publishes(&out), vec![(1, 3, "a".into(), "3".into())]);
    assert_eq!(out.last(), Some(&Output::ResumeReads { conn: 10 }));
    core.handle_publish_done(now, 1, 2, "", "", (0, 0));
    let out = drain(&mut core);
    assert_eq!(publishes(&out), vec![(1, 4, "b".into(), "4".into())]);
    assert_eq!(out.last(), Some(&Output::ResumeReads { conn: 11 }));
}

/// Sim seeds 307474 and 307547: a connection's publishes were in flight to the topic's old
/// owner and its next one waited for them (the owner had changed). The old link was lost:
/// failing the in-flight ones released the waiting one to the new owner at once, before
/// the connection's close, and it was sequenced before a forward of an earlier one.
#[test]
fn a_lost_link_releases_nothing_more_of_the_connections_it_leaves_uncertain() {
    let now = Instant::now();
    let mut core = linked_core();
    core.handle_link_up(2);
    drain(&mut core);
    publish(&mut core, now, 10, "chat", "1");
    assert_eq!(publishes(&drain(&mut core)).len(), 1);
    move_slot(&mut core, "chat", 2, 9);
    drain(&mut core);
    publish(&mut core, now, 10, "chat", "2");
    publish(&mut core, now, 11, "chat", "x");
    assert_eq!(
        drain(&mut core),
        vec![
            Output::PauseReads { conn: 10 },
            Output::PauseReads { conn: 11 }
        ]
    );
    core.handle_link_down(now, 1);
    let out = drain(&mut core);
    // "2" is not sent (10 is closed instead); 11's publish goes to the new owner.
    assert_eq!(publishes(&out), vec![(2, 2, "chat".into(), "x".into())]);
    assert!(out.contains(&Output::Close {
        conn: 10,
        code: crate::sessions::CLOSE_PUBLISH_UNCERTAIN,
        reason: "publish outcome unknown: the relay link was lost; reconnect".into()
    }));
    assert_eq!(core.publish_counters().dropped_closing, 1);
    // Once 10 is gone, a new connection publishes as usual.
    core.handle_disconnect(now, 10);
    drain(&mut core);
    publish(&mut core, now, 13, "chat", "3");
    assert_eq!(
        publishes(&drain(&mut core)),
        vec![(2, 3, "chat".into(), "3".into())]
    );
}

#[test]
fn an_owner_change_holds_a_topics_publishes_until_the_old_owner_answered() {
    let now = Instant::now();
    let mut core = linked_core();
    core.handle_link_up(2);
    drain(&mut core);
    publish(&mut core, now, 10, "chat", "1");
    publish(&mut core, now, 10, "chat", "2");
    assert_eq!(publishes(&drain(&mut core)).len(), 2);
    move_slot(&mut core, "chat", 2, 9);
    drain(&mut core);
    // "3" must not overtake "1" and "2" by the new owner's shorter path.
    publish(&mut core, now, 10, "chat", "3");
    assert_eq!(drain(&mut core), vec![Output::PauseReads { conn: 10 }]);
    // Another topic of the same slot owner is not held up by it.
    publish(&mut core, now, 12, "other", "x");
    assert_eq!(publishes(&drain(&mut core)).len(), 1);
    core.handle_publish_done(now, 1, 1, "", "", (0, 0));
    assert_eq!(
        drain(&mut core),
        vec![],
        "one of the old owner's is still open"
    );
    core.handle_publish_done(now, 1, 2, "", "", (0, 0));
    let out = drain(&mut core);
    let to = core.publish_route("chat");
    assert_eq!(to, Some(2));
    assert_eq!(publishes(&out), vec![(2, 4, "chat".into(), "3".into())]);
    assert_eq!(out.last(), Some(&Output::ResumeReads { conn: 10 }));
    // From now on the topic goes to its new owner without waiting.
    publish(&mut core, now, 10, "chat", "4");
    assert_eq!(
        publishes(&drain(&mut core)),
        vec![(2, 5, "chat".into(), "4".into())]
    );
}

#[test]
fn a_lost_link_fails_its_unanswered_publishes_and_closes_their_connections_and_no_route_fails_at_once(
) {
    let now = Instant::now();
    let mut core = linked_core().with_publish_limits(1, Duration::from_secs(15));
    publish(&mut core, now, 10, "chat", "1");
    publish(&mut core, now, 11, "chat", "2");
    assert_eq!(publishes(&drain(&mut core)).len(), 1);
    core.handle_link_down(now, 1);
    let lost = ClientError::new(
        ErrorCode::Unavailable,
        "the relay link was lost; the publish may or may not have been delivered",
    )
    .with_topic("chat");
    let unreachable = ClientError::new(
        ErrorCode::Unavailable,
        "the topic's distributor cannot be reached right now; retry",
    )
    .with_topic("chat");
    assert_eq!(
        drain(&mut core),
        vec![
            Output::PublishFailed {
                conn: 10,
                error: lost
            },
            // "1" may still be sequenced, after anything 10 sends next: its stream ends
            // (sim seed 156).
            Output::Close {
                conn: 10,
                code: crate::sessions::CLOSE_PUBLISH_UNCERTAIN,
                reason: "publish outcome unknown: the relay link was lost; reconnect".into()
            },
            // The waiting one has no route now: certainly not sent, its stream goes on.
            Output::PublishFailed {
                conn: 11,
                error: unreachable.clone()
            },
            Output::ResumeReads { conn: 11 },
        ]
    );
    // 10 is being closed: what it still sends before the close takes effect goes nowhere.
    publish(&mut core, now, 10, "chat", "3");
    assert_eq!(drain(&mut core), vec![]);
    assert_eq!(core.publish_counters().dropped_closing, 1);
    publish(&mut core, now, 12, "chat", "3");
    assert_eq!(
        drain(&mut core),
        vec![Output::PublishFailed {
            conn: 12,
            error: unreachable
        }]
    );
    // Back up: numbering goes on (an answer meant for the old link matches nothing).
    core.handle_link_up(1);
    drain(&mut core);
    publish(&mut core, now, 12, "chat", "4");
    assert_eq!(
        publishes(&drain(&mut core)),
        vec![(1, 2, "chat".into(), "4".into())]
    );
}

#[test]
fn an_unanswered_publish_fails_after_the_answer_timeout_closes_its_connection_and_frees_its_room() {
    let t0 = Instant::now();
    let mut core = linked_core().with_publish_limits(1, Duration::from_secs(15));
    publish(&mut core, t0, 10, "chat", "1");
    publish(&mut core, t0, 11, "chat", "2");
    assert_eq!(publishes(&drain(&mut core)).len(), 1);
    core.handle_tick(t0 + Duration::from_secs(14));
    assert!(publishes(&drain(&mut core)).is_empty());
    let t1 = t0 + Duration::from_secs(15);
    core.handle_tick(t1);
    let out = drain(&mut core);
    assert!(matches!(
        &out[0],
        Output::PublishFailed { conn: 10, error } if error.code == ErrorCode::Unavailable
            && error.message.contains("did not answer within 15000 ms")
    ));
    // It may still be sequenced after anything 10 sends next: 10's stream ends.
    assert!(matches!(
        &out[1],
        Output::Close { conn: 10, code, .. } if *code == crate::sessions::CLOSE_PUBLISH_UNCERTAIN
    ));
    assert_eq!(publishes(&out), vec![(1, 2, "chat".into(), "2".into())]);
    assert_eq!(out.last(), Some(&Output::ResumeReads { conn: 11 }));
    assert_eq!(core.publish_counters().timed_out, 1);
    assert_eq!(core.publish_counters().closed_uncertain, 1);
    // Its late answer matches nothing.
    core.handle_publish_done(t1, 1, 1, "", "", (0, 0));
    assert_eq!(core.publish_counters().unmatched_answers, 1);
}

#[test]
fn a_publisher_that_leaves_takes_its_waiting_publish_along() {
    let now = Instant::now();
    let mut core = linked_core().with_publish_limits(1, Duration::from_secs(15));
    publish(&mut core, now, 10, "chat", "1");
    publish(&mut core, now, 11, "chat", "2");
    publish(&mut core, now, 12, "chat", "3");
    drain(&mut core);
    core.handle_disconnect(now, 11);
    assert_eq!(drain(&mut core), vec![]);
    core.handle_publish_done(now, 1, 1, "", "", (0, 0));
    let out = drain(&mut core);
    assert_eq!(publishes(&out), vec![(1, 2, "chat".into(), "3".into())]);
    assert_eq!(out.last(), Some(&Output::ResumeReads { conn: 12 }));
}

fn pos(epoch: u64, seq: u64) -> StreamPos {
    StreamPos { epoch, seq }
}

fn recovered(request_id: u64, ok: bool, current: (u64, u64), seqs: &[u64]) -> Recovered {
    Recovered {
        request_id,
        topic: "live".into(),
        ok,
        epoch: current.0,
        seq: current.1,
        messages: seqs
            .iter()
            .map(|&seq| firetower_proto::relay::v1::Deliver {
                canon_epoch: 0,
                canon_seq: 0,
                topic: "live".into(),
                epoch: current.0,
                seq,
                data: Bytes::from(seq.to_string()),
                msg_id: seq,
                route_tag: 0,
                sequenced_at_us: 0,
            })
            .collect(),
        last: true,
    }
}

/// The Recover requests among `out`: (owner, epoch, seq, request id).
fn recovers(out: &[Output]) -> Vec<(u64, u64, u64, u64)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Relay {
                distributor,
                frame:
                    RelayFrame {
                        frame: Some(Frame::Recover(r)),
                    },
            } => Some((*distributor, r.epoch, r.seq, r.request_id)),
            _ => None,
        })
        .collect()
}

/// A subscribe with a position waits for the owner's answer (on the topic's lane): live
/// deliveries before it go to the others only (the answer holds them), the answer's
/// messages go to this connection alone after its ack, then it gets the live ones.
#[test]
fn a_subscribe_with_a_position_gets_what_it_missed_then_the_live_deliveries() {
    let now = Instant::now();
    let mut core = live_core(now);
    core.handle_subscribe_from(
        now,
        11,
        vec!["live".into()],
        vec![("live".into(), pos(4, 3))],
    );
    let out = drain(&mut core);
    assert_eq!(recovers(&out), vec![(1, 4, 3, 1)]);
    assert!(!out
        .iter()
        .any(|o| matches!(o, Output::Subscribed { .. } | Output::SubscribedFrom { .. })));
    // Seq 5 arrives before the answer: only connection 10 gets it.
    let f = deliver(&mut core, "live", 4, 5, b"5", tags(5, 0)).unwrap();
    assert_eq!(&f.conns[..], &[10]);
    core.handle_recovered(recovered(1, true, (4, 5), &[4, 5]));
    let out = drain(&mut core);
    assert_eq!(
        out[0],
        Output::SubscribedFrom {
            conn: 11,
            topic: "live".into(),
            recovery: Recovery {
                recovered: true,
                position: None
            }
        }
    );
    let sent: Vec<(Vec<ConnId>, (u64, u64, String))> = out[1..]
        .iter()
        .map(|o| match o {
            Output::Deliver(f) => (f.conns.to_vec(), parsed(f)),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        sent,
        vec![
            (vec![11], (4, 4, "4".into())),
            (vec![11], (4, 5, "5".into()))
        ]
    );
    let f = deliver(&mut core, "live", 4, 6, b"6", tags(6, 0)).unwrap();
    assert_eq!(&f.conns[..], &[10, 11]);
    assert_eq!(core.counters().recoveries, 1);
    assert_eq!(core.counters().recovered_deliveries, 2);
}

/// A topic new on this edge, recovered up to the owner's position: the connection joins
/// past that position, so a message the answer covered that reaches the edge later (a route
/// change this edge learns of replays older messages of the topic) is not passed to it
/// again (sim seed 41476).
#[test]
fn a_connection_recovered_past_what_this_edge_passed_joins_past_the_answer() {
    let now = Instant::now();
    let mut core = linked_core();
    core.handle_subscribe_from(
        now,
        11,
        vec!["live".into()],
        vec![("live".into(), pos(4, 2))],
    );
    core.handle_interest_ack(1, "live", 4);
    let asked = recovers(&drain(&mut core));
    core.handle_recovered(recovered(asked[0].3, true, (4, 5), &[3, 4, 5]));
    assert_eq!(delivered(drain(&mut core)).len(), 3);
    // Older messages of the stream arrive after the answer: not for 11.
    assert!(deliver(&mut core, "live", 4, 4, b"4", tags(4, 0)).is_none());
    assert!(deliver(&mut core, "live", 4, 5, b"5", tags(5, 0)).is_none());
    let f = deliver(&mut core, "live", 4, 6, b"6", tags(6, 0)).unwrap();
    assert_eq!(&f.conns[..], &[11]);
}

/// A position the owner cannot serve: the ack says so with the topic's position, and the
/// connection gets the live deliveries from there.
#[test]
fn a_position_that_cannot_be_served_is_answered_with_the_current_one() {
    let now = Instant::now();
    let mut core = linked_core();
    // A new topic: the recovery starts once the interest is acked.
    core.handle_subscribe_from(
        now,
        11,
        vec!["live".into()],
        vec![("live".into(), pos(3, 9))],
    );
    assert!(recovers(&drain(&mut core)).is_empty());
    core.handle_interest_ack(1, "live", 4);
    assert_eq!(recovers(&drain(&mut core)), vec![(1, 3, 9, 1)]);
    core.handle_recovered(recovered(1, false, (4, 7), &[]));
    assert_eq!(
        drain(&mut core),
        vec![Output::SubscribedFrom {
            conn: 11,
            topic: "live".into(),
            recovery: Recovery {
                recovered: false,
                position: Some(pos(4, 7))
            }
        }]
    );
    let f = deliver(&mut core, "live", 4, 8, b"8", tags(8, 0)).unwrap();
    assert_eq!(&f.conns[..], &[11]);
    // A late or unknown answer changes nothing.
    core.handle_recovered(recovered(1, true, (4, 8), &[8]));
    core.handle_recovered(recovered(99, true, (4, 8), &[8]));
    assert!(drain(&mut core).is_empty());
}

/// An unanswered recovery fails like a subscribe that waited too long.
#[test]
fn recoveries_time_out() {
    let now = Instant::now();
    let mut core = linked_core();
    core.handle_subscribe(now, 10, vec!["live".into()]);
    core.handle_interest_ack(1, "live", 4);
    core.handle_subscribe_from(
        now,
        11,
        vec!["live".into()],
        vec![("live".into(), pos(4, 1))],
    );
    drain(&mut core);
    core.handle_tick(now + Duration::from_secs(5));
    let out = drain(&mut core);
    assert!(
        out.iter().any(|o| matches!(o, Output::SubscribeFailed { conn: 11, error } if error.code == ErrorCode::Unavailable)),
        "{out:?}"
    );
    assert_eq!(core.conn_topics(11), 0);
}

/// A split topic is numbered by its owner too: a position in it is recovered from the
/// owner, and the connection joins the deliveries (which come on a sub-topic's lane, not
/// the answer's) at the answer's position: just before the first delivery past it when
/// this edge had not passed it, or with what this edge passed after it meanwhile.
#[test]
fn a_split_topic_is_recovered_at_the_answers_position() {
    let now = Instant::now();
    let mut core = linked_core();
    core.handle_watch(now, hot("live", 2, 0, 5, true, 5));
    let sub = edge_route_topic(7, "live", 2);
    core.handle_subscribe(now, 10, vec!["live".into()]);
    core.handle_interest_ack(1, &sub, 4);
    drain(&mut core);
    assert_eq!(
        deliver(&mut core, &sub, 4, 1, b"1", ct(1, 5, 1)).map(|f| parsed(&f)),
        Some((4, 1, "1".into()))
    );

    // Behind the answer: the answer gives 2 and 3; the edge's 3 goes to 10 alone.
    core.handle_subscribe_from(
        now,
        11,
        vec!["live".into()],
        vec![("live".into(), pos(4, 1))],
    );
    let asked = recovers(&drain(&mut core));
    assert_eq!(asked.len(), 1, "asked the topic's owner");
    assert!(deliver(&mut core, &sub, 4, 2, b"2", ct(2, 5, 2)).is_some());
    core.handle_recovered(recovered(asked[0].3, true, (4, 3), &[2, 3]));
    let out = drain(&mut core);
    assert_eq!(delivered(out), vec![(4, 2, "2".into()), (4, 3, "3".into())]);
    let f = deliver(&mut core, &sub, 4, 3, b"3", ct(3, 5, 3)).unwrap();
    assert_eq!(&f.conns[..], &[10]);
    let f = deliver(&mut core, &sub, 4, 4, b"4", ct(4, 5, 4)).unwrap();
    assert_eq!(&f.conns[..], &[10, 11]);

    // Ahead of the answer: 5 and 6 passed while it was on its way; 12 gets them after it.
    core.handle_subscribe_from(
        now,
        12,
        vec!["live".into()],
        vec![("live".into(), pos(4, 3))],
    );
    let asked = recovers(&drain(&mut core));
    assert!(deliver(&mut core, &sub, 4, 5, b"5", ct(5, 5, 5)).is_some());
    assert!(deliver(&mut core, &sub, 4, 6, b"6", ct(6, 5, 6)).is_some());
    core.handle_recovered(recovered(asked[0].3, true, (4, 4), &[4]));
    let got: Vec<(u64, u64, String)> = delivered(drain(&mut core));
    assert_eq!(
        got,
        vec![(4, 4, "4".into()), (4, 5, "5".into()), (4, 6, "6".into())]
    );
    let f = deliver(&mut core, &sub, 4, 7, b"7", ct(7, 5, 7)).unwrap();
    assert_eq!(&f.conns[..], &[10, 11, 12]);
    assert_eq!(core.counters().recoveries, 2);
}

/// The owner's answer to a split topic's recovery can stop short of what this edge passed
/// (it serves its history only up to a message still being fanned out): of what passed
/// before the subscribe arrived (the newest are always kept), and while the recovery
/// waits its turn to be asked (the bound in flight), the connection gets the rest from
/// what was kept (sim seed 76: a gap at the seam).
#[test]
fn a_split_recovery_waiting_to_be_asked_keeps_what_passes_meanwhile() {
    let now = Instant::now();
    let mut core = linked_core();
    core.handle_watch(now, hot("live", 2, 0, 5, true, 5));
    let sub = edge_route_topic(7, "live", 2);
    core.handle_subscribe(now, 10, vec!["live".into(), "other".into()]);
    core.handle_interest_ack(1, &sub, 4);
    core.handle_interest_ack(1, "other", 4);
    drain(&mut core);
    assert!(deliver(&mut core, &sub, 4, 1, b"1", ct(1, 5, 1)).is_some());
    assert!(deliver(&mut core, &sub, 4, 2, b"2", ct(2, 5, 2)).is_some());
    // Every request in flight is another topic's.
    let max = MAX_RECOVERIES_IN_FLIGHT as u64;
    for conn in 100..100 + max {
        core.handle_subscribe_from(
            now,
            conn,
            vec!["other".into()],
            vec![("other".into(), pos(4, 0))],
        );
    }
    let others = recovers(&drain(&mut core));
    assert_eq!(others.len(), MAX_RECOVERIES_IN_FLIGHT);
    core.handle_subscribe_from(
        now,
        11,
        vec!["live".into()],
        vec![("live".into(), pos(4, 1))],
    );
    assert!(recovers(&drain(&mut core)).is_empty(), "queued");
    assert!(deliver(&mut core, &sub, 4, 3, b"3", ct(3, 5, 3)).is_some());
    // Room: the request goes out; 4 passes; the answer stops at 1.
    let mut answer = recovered(others[0].3, true, (4, 0), &[]);
    answer.topic = "other".into();
    core.handle_recovered(answer);
    let asked = recovers(&drain(&mut core));
    assert_eq!(asked.len(), 1);
    assert!(deliver(&mut core, &sub, 4, 4, b"4", ct(4, 5, 4)).is_some());
    core.handle_recovered(recovered(asked[0].3, true, (4, 1), &[]));
    assert_eq!(
        delivered(drain(&mut core)),
        vec![(4, 2, "2".into()), (4, 3, "3".into()), (4, 4, "4".into())]
    );
    assert_eq!(core.counters().recovery_record_short, 0);
    let f = deliver(&mut core, &sub, 4, 5, b"5", ct(5, 5, 5)).unwrap();
    assert_eq!(&f.conns[..], &[10, 11]);
}

/// An answer that carries messages routed by a hot-topic view (the topic is being split at
/// the owner), or that arrives while the topic changes route here, is not served: the
/// route holds pass those messages on in the edge's own numbering, so they would come
/// twice (sim seed 850779). The ack says not recovered, without a position.
#[test]
fn a_recovery_of_a_topic_that_changes_route_is_refused() {
    let now = Instant::now();
    let mut core = linked_core();
    core.handle_subscribe(now, 10, vec!["live".into()]);
    core.handle_interest_ack(1, "live", 4);
    core.handle_subscribe_from(
        now,
        11,
        vec!["live".into()],
        vec![("live".into(), pos(4, 1))],
    );
    drain(&mut core);
    let mut answer = recovered(1, true, (4, 3), &[2, 3]);
    answer.messages[1].route_tag = 5;
    core.handle_recovered(answer);
    assert_eq!(
        drain(&mut core),
        vec![Output::SubscribedFrom {
            conn: 11,
            topic: "live".into(),
            recovery: Recovery {
                recovered: false,
                position: None
            }
        }]
    );
    let f = deliver(&mut core, "live", 4, 4, b"4", tags(4, 0)).unwrap();
    assert_eq!(&f.conns[..], &[10, 11]);
    assert_eq!(core.counters().recoveries_refused, 1);
}

/// At most MAX_RECOVERIES_IN_FLIGHT requests wait for answers; more wait their turn in a
/// queue, and go out, oldest first, as answers (or connections that leave) make room. One
/// queued past the subscribe timeout fails like an unconfirmed subscribe.
#[test]
fn recoveries_beyond_the_bound_in_flight_wait_their_turn() {
    let now = Instant::now();
    let mut core = live_core(now);
    let max = MAX_RECOVERIES_IN_FLIGHT as u64;
    let subscribe = |core: &mut EdgeCore, conn: u64| {
        core.handle_subscribe_from(
            now,
            conn,
            vec!["live".into()],
            vec![("live".into(), pos(4, 1))],
        )
    };
    for conn in 100..100 + max {
        subscribe(&mut core, conn);
    }
    assert_eq!(recovers(&drain(&mut core)).len(), MAX_RECOVERIES_IN_FLIGHT);
    // Three more: queued, no request and no ack yet.
    for conn in [997, 998, 999] {
        subscribe(&mut core, conn);
    }
    assert_eq!(drain(&mut core), vec![]);
    // The first request is answered: the oldest queued one goes out.
    core.handle_recovered(recovered(1, true, (4, 1), &[]));
    let out = drain(&mut core);
    let sent = recovers(&out);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].3, max + 1);
    // A connection with a request out leaves: the next one goes out.
    core.handle_disconnect(now, 101);
    let sent = recovers(&drain(&mut core));
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].3, max + 2);
    // Its answer reaches it alone, and it becomes a recipient.
    core.handle_recovered(recovered(max + 1, true, (4, 2), &[2]));
    let out = drain(&mut core);
    assert!(out.contains(&Output::SubscribedFrom {
        conn: 997,
        topic: "live".into(),
        recovery: Recovery {
            recovered: true,
            position: None
        }
    }));
    assert_eq!(core.counters().recoveries_refused, 0);
    // The last queued one (999) would have gone out after another answer; none comes, and
    // it fails at the subscribe timeout with the ones still out.
    core.handle_tick(now + Duration::from_secs(60));
    let failed: Vec<ConnId> = drain(&mut core)
        .into_iter()
        .filter_map(|o| match o {
            Output::SubscribeFailed { conn, .. } => Some(conn),
            _ => None,
        })
        .collect();
    assert!(failed.contains(&999), "{failed:?}");
    assert!(!failed.contains(&997), "{failed:?}");
}

fn seqs_of(out: Vec<Output>) -> Vec<u64> {
    delivered(out).into_iter().map(|(_, seq, _)| seq).collect()
}

/// A slot moved with its streams: the new owner's first deliveries can overtake the old
/// owner's last ones. A gap in a stream waits for them, and the held ones follow in order.
#[test]
fn a_gap_in_a_stream_waits_for_the_missing_deliveries() {
    let now = Instant::now();
    let mut core = live_core(now);
    core.handle_tick(now);
    for seq in [1, 2] {
        assert!(deliver(&mut core, "live", 4, seq, b"0", tags(seq, 0)).is_some());
    }
    // 5 and 4 from the new owner first: held (any order among themselves).
    core.handle_deliver("live", 4, 5, Bytes::from_static(b"5"), tags(5, 0));
    core.handle_deliver("live", 4, 4, Bytes::from_static(b"4"), tags(4, 0));
    assert!(drain(&mut core).is_empty());
    // 3, the old owner's last: it and everything held behind it, in order.
    core.handle_deliver("live", 4, 3, Bytes::from_static(b"3"), tags(3, 0));
    assert_eq!(seqs_of(drain(&mut core)), vec![3, 4, 5]);
    // A gap nobody fills (a lost message) is given up on after SEAM_WAIT.
    core.handle_deliver("live", 4, 7, Bytes::from_static(b"7"), tags(7, 0));
    core.handle_tick(now + Duration::from_millis(500));
    assert!(drain(&mut core).is_empty());
    core.handle_tick(now + seam::SEAM_WAIT + Duration::from_millis(500));
    assert_eq!(seqs_of(drain(&mut core)), vec![7]);
    assert_eq!(core.counters().seam_gaps_passed, 1);
    // A late 6 is stale now; a new stream epoch passes at once and releases any hold.
    assert!(deliver(&mut core, "live", 4, 6, b"6", tags(6, 0)).is_none());
    core.handle_deliver("live", 4, 9, Bytes::from_static(b"9"), tags(9, 0));
    core.handle_deliver("live", 8, 1, Bytes::from_static(b"10"), tags(10, 0));
    assert_eq!(
        delivered(drain(&mut core))
            .into_iter()
            .map(|(e, s, _)| (e, s))
            .collect::<Vec<_>>(),
        vec![(4, 9), (8, 1)]
    );
}

/// Found by sim seed 167: a connection recovered a split topic past what this edge had
/// passed, left the topic and subscribed again (without a position); the edge then passed
/// what the recovery had given it, and it got those messages twice. It joins past the same
/// position again.
#[test]
fn a_connection_that_recovered_ahead_and_subscribes_again_joins_past_the_same_position() {
    let now = Instant::now();
    let mut core = linked_core();
    core.handle_watch(now, hot("live", 2, 0, 5, true, 5));
    let sub = edge_route_topic(7, "live", 2);
    core.handle_subscribe(now, 10, vec!["live".into()]);
    core.handle_interest_ack(1, &sub, 4);
    drain(&mut core);
    assert!(deliver(&mut core, &sub, 4, 1, b"1", ct(1, 5, 1)).is_some());
    core.handle_subscribe_from(
        now,
        11,
        vec!["live".into()],
        vec![("live".into(), pos(4, 1))],
    );
    let asked = recovers(&drain(&mut core));
    core.handle_recovered(recovered(asked[0].3, true, (4, 3), &[2, 3]));
    assert_eq!(delivered(drain(&mut core)).len(), 2);
    core.handle_unsubscribe(11, vec!["live".into()]);
    core.handle_subscribe(now, 11, vec!["live".into()]);
    assert!(drain(&mut core).contains(&Output::Subscribed {
        conn: 11,
        topics: vec!["live".into()]
    }));
    let f = deliver(&mut core, &sub, 4, 2, b"2", ct(2, 5, 2)).unwrap();
    assert_eq!(&f.conns[..], &[10]);
    let f = deliver(&mut core, &sub, 4, 3, b"3", ct(3, 5, 3)).unwrap();
    assert_eq!(&f.conns[..], &[10]);
    let f = deliver(&mut core, &sub, 4, 4, b"4", ct(4, 5, 4)).unwrap();
    assert_eq!(&f.conns[..], &[10, 11]);
}
