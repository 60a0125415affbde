//! Every seed that found a bug, kept as a regression test (`firetower-sim --regressions`,
//! run by CI). A seed replays exactly against the simulator version that found it; when the
//! workload or fault generator changes, the same seed draws a different run, so the list
//! keeps the seed and says what it found, and the 200-seed sweep keeps covering the class.

/// (seed, what it found and what fixed it).
pub const SEEDS: &[(u64, &str)] = &[
    (
        1,
        "a distributor that joined mid-run got a certificate from a second CA, edges could not \
         link to it, and its slots' publishes were acknowledged but reached nobody (a simulator \
         bug: one CA per cluster)",
    ),
    (
        4,
        "after a partition between metastore nodes healed, a follower stayed behind for good: \
         turmoil's TCP had dropped bytes, the HTTP/2 connection was wedged and every Raft RPC on \
         it timed out (fix: HTTP/2 keep-alive on every gRPC channel)",
    ),
    (
        15,
        "the same wedged-connection bug, seen by the metastore replicas-converge invariant \
         after two partitions",
    ),
    (
        18,
        "a forwarded publish whose reply was lost was retried and sequenced twice: a client got \
         the message twice under two seq numbers (fix: forward keys, deduplicated by the owner)",
    ),
    (
        48,
        "the same duplicate after a retried forward, and then (with the first fix) missing \
         deliveries because a restarted distributor reused its forward keys (fix: the key \
         includes the registration incarnation)",
    ),
    (
        11,
        "a forward whose reply was lost was retried after the slot moved to another owner, which \
         could not recognise the key and sequenced the message a second time (fix: after an \
         unclear forward, only that owner is retried; otherwise UNAVAILABLE)",
    ),
    (
        84,
        "the same, with the slot moving to the forwarding distributor itself, which sequenced \
         the message locally a second time",
    ),
    (
        357,
        "a restarted distributor took its first routing snapshot from a metastore node that was \
         still catching up, believed it owned slots at old epochs, and sequenced messages under \
         (epoch, seq) pairs already used: a client saw seq go backwards (fix: the watch starts \
         from a linearizable read and never goes back; a distributor sequences a slot only at \
         an epoch at least its registration incarnation)",
    ),
    (485, "the same stale-snapshot bug, on another topic"),
    (
        27,
        "hot topics: a client unsubscribed from a topic whose route had changed (split, then \
         merged) long before and subscribed again; its edge had no other subscriber, joined \
         the route again with the change's route_since, and the owner replayed the deliveries \
         it kept since that change: the client got a message it had already had. Fixed: only a \
         route joined during a change asks for a replay",
    ),
    (
        41,
        "the same late-join replay, 20 s after the merge: 26 old deliveries replayed to a \
         resubscribing client",
    ),
    (
        155,
        "hot topics: a client left and rejoined a split topic during a merge; its edge had \
         dropped the topic with its recent message ids, and a copy of a message it had already \
         passed on, still in flight on the other route, came through again. Fixed: an edge \
         keeps the recent ids of a few departed split topics",
    ),
    (
        377,
        "hot topics: a fence completed a route change in the middle of a batch of deliveries; \
         the held deliveries were queued behind the later ones of the batch and a client saw \
         the epoch go back. Fixed: the edge passes them on before the next frame",
    ),
    (
        87,
        "hot topics: a publish done on T#0 and T#1 under the old route tag was refused as stale \
         on the others and routed again only to the names not done; after the change an edge \
         on T#0 asked only for what came since the change and a client never got the message. \
         Fixed: under a new route tag every name is published again (unit test \
         a_new_route_tag_publishes_every_name_again_even_those_already_done)",
    ),
    (
        150,
        "a forward whose reply was lost was retried after the forwarder registered again, under \
         its new incarnation: the owner did not recognise the keys and sequenced the message \
         twice. Fixed: a retry keeps the first incarnation with its keys (unit test \
         a_retry_after_registering_again_keeps_the_first_incarnation_and_keys)",
    ),
    (
        188,
        "per-publisher order: an owner whose view lagged sequenced a message tagged with a \
         prepared split, then the same publisher's later message tagged with the old route; \
         edges held the first for the new route and passed the second at once. Fixed: an \
         owner refuses a tag below the highest it already sequenced on the name (unit test \
         a_tag_below_one_already_sequenced_is_stale_even_before_the_view_shows_its_entry)",
    ),
    (51, "the same lagging-owner reordering, on a plain topic being split"),
    (
        193,
        "the same lagging-owner reordering across two names of one topic (a sub-topic tagged \
         with the old split after the plain name was sequenced with the merge's tag), during \
         a slot move. Fixed: the floor is per topic, over all its names",
    ),
    (
        29,
        "per-publisher order: a forced route switch passed the old route's held messages \
         before the new route's, which began with its owner's replay of messages the old \
         route had missed. Fixed: the new route's held deliveries go first (unit test \
         a_forced_switch_merges_both_routes_held_deliveries)",
    ),
    (
        110,
        "per-publisher order: an edge's relay link closed, the client was told unavailable and \
         published on, and the distributor's retry of the earlier publish arrived after the \
         later ones. Fixed: a distributor abandons an edge's unfinished client publishes when \
         its link closes (unit test an_abandoned_publish_is_not_retried_and_does_not_hold_the_topic)",
    ),
    (
        14,
        "completeness: a client publish abandoned while queued behind an earlier one of its \
         topic stayed in the queue and held every later publish of the topic. Fixed: an op \
         that ends while queued leaves the queue (unit test \
         an_abandoned_queued_publish_leaves_the_queue)",
    ),
    (
        500123,
        "per-publisher order: an edge saw a split 0 -> 7 and then 7 -> 8 late; its 7-way \
         sub-topic is also one of the 8, and when it became the first route it passed on \
         what it held, though the 8-way route carried those messages too behind an earlier \
         one it had got by replay. Fixed: a route that becomes first keeps holding what the \
         next route carries (unit test \
         a_route_that_becomes_first_keeps_holding_what_the_next_route_carries)",
    ),
    (
        79874,
        "per-publisher order: a forced route switch after each route had lost part of a \
         burst passed a late message of the new route before the old route's middle of the \
         burst. Fixed: the merge keeps both orders where they share messages and puts the \
         old route's rest before the new route's tail (unit test \
         a_forced_switch_keeps_the_first_routes_order_for_what_the_next_route_lacks)",
    ),
    (
        126851,
        "per-publisher order: an edge cut off from the metastore and the topic's owner missed \
         a message on the old route, then passed the publisher's next one, routed by a split \
         it had not seen yet, at once; the new route's replay brought the first one after \
         it. Fixed: a delivery tagged above the edge's view of the topic's hot entry waits \
         (with the topic's later ones) until the view catches up (unit test \
         a_delivery_routed_by_a_newer_view_waits_for_this_edges_view)",
    ),
    (126944, "the same edge-view lag, with 4 distributors and 2 edges"),
    (
        850779,
        "recovery: a client recovered a message of a topic whose split the owner had \
         prepared (the message carried its tag); the edge's route switch then passed the \
         same message again in its own numbering. Fixed: an answer with tagged messages, or \
         one arriving while the topic changes route at the edge, is not served (unit test \
         a_recovery_of_a_topic_that_changes_route_is_refused)",
    ),
    (
        156,
        "per-publisher order on one WebSocket connection: the edge failed a client's \
         publishes as unavailable when its relay link dropped and took the connection's next \
         ones, but a forward of the first was in flight and was sequenced later, after them. \
         Fixed: a publish with no known outcome (lost link, no answer in time) closes its \
         connection with 4003 (unit test \
         a_lost_link_fails_its_unanswered_publishes_and_closes_their_connections_and_no_route_fails_at_once)",
    ),
    (
        850864,
        "per-publisher order: a distributor cut off from the metastore kept sequencing a          slot the metastore had moved to another, so a publisher's later message got an          older epoch and passed its earlier one. Fixed: lease fencing, a distributor          sequences only within a lease TTL of a confirmed heartbeat its view has caught up          with, and a slot taken from a live owner waits a TTL (unit tests          an_owner_sequences_only_within_a_lease_the_metastore_confirmed,          a_slot_taken_from_a_live_owner_waits_a_lease_and_one_from_a_gone_owner_does_not)",
    ),
    (
        307474,
        "per-publisher order on one WebSocket connection: its publishes were in flight to a \
         topic's old owner and its next one waited for them (the owner had changed); the old \
         link was lost, and failing the in-flight ones released the waiting one to the new \
         owner at once, before the connection's 4003 close, so it was sequenced before a \
         forward of an earlier one. Fixed: a connection left with an unknown outcome has its \
         waiting publishes dropped before anything is released, and nothing more of it is \
         sent (unit test a_lost_link_releases_nothing_more_of_the_connections_it_leaves_uncertain)",
    ),
    (
        307547,
        "the same as 307474, another connection and run",
    ),
    (
        15,
        "split-topic recovery (session 11, one numbering for split topics): a client \
         recovered a message from the topic's history while its fan-out to the sub-topics \
         was still under way, left and subscribed again, and got it a second time when it \
         arrived live. Fixed: history is served only up to the first message still being \
         fanned out (unit test history_stops_before_a_message_still_being_fanned_out)",
    ),
    (
        377,
        "the same cause: the recovered message's fan-out never ended (its owner crashed), \
         and its publisher's retry numbered it again in the new epoch",
    ),
    (
        167,
        "split-topic recovery: a client recovered past what its edge had passed (the edge \
         held the messages for a route change), left the topic and subscribed again without \
         a position, and got them again at the switch. Fixed: it joins past the same \
         position (unit test \
         a_connection_that_recovered_ahead_and_subscribes_again_joins_past_the_same_position)",
    ),
    (
        127,
        "a split topic's message numbered three times (a duplicate): a joining distributor \
         forwarded it before it had registered, so its forward carried no keys, and each \
         retry was numbered again. Fixed: nothing is forwarded before the registration \
         (unit test nothing_is_forwarded_before_the_registration); handovers also carry \
         the forward keys (unit test a_handover_takes_the_forward_keys_along)",
    ),
    (
        76,
        "split-topic recovery: the owner answered up to a message before one still being \
         fanned out, which the edge had passed before the client's subscribe arrived: a gap. \
         Fixed: the edge always keeps the newest 64 deliveries of a split topic, and all \
         while a connection with a position waits (unit test \
         a_split_recovery_waiting_to_be_asked_keeps_what_passes_meanwhile)",
    ),
    (
        41476,
        "recovery on an edge whose view had not seen a topic's split yet: the connection \
         recovered the topic as a plain one and became a recipient at once; when the edge \
         learned of the split, the owner of its new route replayed older messages, and the \
         connection got one it had recovered. Fixed: a connection recovered past what its \
         edge passed joins just before the first delivery past the answer (unit test \
         a_connection_recovered_past_what_this_edge_passed_joins_past_the_answer)",
    ),
    (
        716205,
        "completeness on a split topic: its slot went 2@4, unowned, 3@84 (a failed \
         Handover: a new stream), 2@88, 1@91 while 2's view still showed 2@4; asked by 1, \
         2 handed over its epoch-4 stream and edges that had passed epoch 84 dropped the \
         rest as stale. Fixed: a Handover names each slot's reign under the answerer and \
         only streams of that reign go along (unit test \
         a_lagging_owner_hands_over_no_stream_of_an_older_reign_than_asked)",
    ),
    (
        716164,
        "completeness on split topics after slot moves with failed handovers (the class of \
         716205)",
    ),
    (
        716342,
        "completeness on split topics after slot moves with failed handovers (the class of \
         716205)",
    ),    (
        5070,
        "completeness on a split topic: at its owner, local publishes that waited (one not \
         numbered yet, others behind it) were numbered after forwarded runs queued behind them \
         and went to the sub-topics first; an edge that had just joined a sub-topic started \
         at the first position it got and dropped the earlier ones as stale, though they were \
         published after its subscriber's ack. Fixed: a split topic's runs leave for the \
         sub-topics in the order of their positions (unit test \
         sub_topic_runs_leave_in_the_order_of_their_positions)",
    ),
];
