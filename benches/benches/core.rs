//! Criterion benches of the hot pure parts: slot_of, client frame parsing and delivery
//! encoding, relay framing, the edge fan-out core and the distributor's sequencing.
//! Run with `cargo bench -p firetower-benches` (not part of CI).

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use firetower_distributor::core::DistributorCore;
use firetower_edge::core::{EdgeCore, Output};
use firetower_proto::client::{encode_delivery, parse_client_frame};
use firetower_proto::metastore::v1 as pb;
use firetower_proto::relay::v1::{relay_frame::Frame, Deliver, RelayFrame};
use firetower_proto::relay::{decode_frame, encode_frame, DEFAULT_MAX_FRAME_LEN};
use firetower_proto::{slot_of, SLOT_COUNT};
use tokio::sync::mpsc;
use tokio::time::{Duration, Instant};

fn snapshot(owner: u64) -> pb::WatchEvent {
    pb::WatchEvent {
        event: Some(pb::watch_event::Event::Snapshot(pb::SlotMap {
            revision: 1,
            members: vec![],
            slot_owner: vec![owner; SLOT_COUNT],
            slot_epoch: vec![1; SLOT_COUNT],
            slot_edges: vec![],
            hot_topics: vec![],
        })),
    }
}

fn bench_slot(c: &mut Criterion) {
    c.bench_function("slot_of/16B", |b| {
        b.iter(|| slot_of(black_box("room/1234567890a")))
    });
}

fn bench_client(c: &mut Criterion) {
    let frame = r#"{"type":"publish","topic":"room/42","data":{"user":"u1","text":"hello there, this is a chat line"}}"#;
    c.bench_function("client/parse_publish", |b| {
        b.iter(|| parse_client_frame(black_box(frame), 256).map(|_| ()))
    });
    let sub = r#"{"type":"subscribe","topic":"a,b,c,d,e,f,g,h","data":""}"#;
    c.bench_function("client/parse_subscribe_8", |b| {
        b.iter(|| parse_client_frame(black_box(sub), 256).map(|_| ()))
    });
    let data = format!("\"{}\"", "x".repeat(126));
    c.bench_function("client/encode_delivery_128B", |b| {
        b.iter(|| encode_delivery(black_box("room/42"), black_box(&data), 7, 123456))
    });
    // A delivery of the load generator's, read two ways: its in-place scan, and the Rust
    // client's core (a parse and the event's allocations). The difference, times millions
    // of deliveries a second, is why the generator's subscribers scan.
    let delivery = encode_delivery(
        "bench-3",
        &firetower_benches::scan::payload(123_456_789, 42, 128),
        7,
        123_456,
    );
    c.bench_function("client/delivery_128B/generator_scan", |b| {
        b.iter(|| firetower_benches::scan::scan_delivery(black_box(&delivery)))
    });
    let text = std::str::from_utf8(&delivery).unwrap_or_default();
    let mut core = firetower_client::SubscriberCore::default();
    core.subscribe("bench-3");
    // After the first, each is reported as dropped (not past the position), which costs
    // what a message costs: the parse, the topic and data copied into the event.
    c.bench_function("client/delivery_128B/subscriber_core", |b| {
        b.iter(|| core.on_frame(black_box(text)))
    });
}

fn bench_relay(c: &mut Criterion) {
    let frame = RelayFrame {
        frame: Some(Frame::Deliver(Deliver {
            topic: "room/42".into(),
            epoch: 7,
            seq: 123456,
            data: Bytes::from(vec![b'x'; 128]),
            msg_id: 1,
            route_tag: 0,
            ..Deliver::default()
        })),
    };
    c.bench_function("relay/encode_deliver_128B", |b| {
        let mut out = Vec::with_capacity(256);
        b.iter(|| {
            out.clear();
            encode_frame(black_box(&frame), &mut out);
        })
    });
    let mut buf = Vec::new();
    encode_frame(&frame, &mut buf);
    c.bench_function("relay/decode_deliver_128B", |b| {
        b.iter(|| {
            decode_frame(black_box(&buf), DEFAULT_MAX_FRAME_LEN)
                .map(|(f, n)| (f.frame.is_some(), n))
        })
    });
}

/// One message to every subscriber of a topic: the core's order filter and encode, then a
/// try_send of the shared bytes into each connection's bounded queue (what the shell does).
fn bench_fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("edge/fanout");
    for n in [1_000u64, 10_000] {
        let mut core = EdgeCore::new(1, 16, Duration::from_secs(5));
        core.handle_watch(tokio::time::Instant::now(), snapshot(1));
        core.handle_link_up(1);
        let now = Instant::now();
        let mut queues = Vec::new();
        let mut receivers = Vec::new();
        for conn in 0..n {
            core.handle_subscribe(now, conn, vec!["room".into()]);
            let (tx, rx) = mpsc::channel::<Bytes>(1 << 20);
            queues.push(tx);
            receivers.push(rx);
        }
        core.handle_interest_ack(1, "room", 1);
        while core.poll_output().is_some() {}
        let data = Bytes::from(format!("\"{}\"", "x".repeat(126)));
        let mut seq = 0u64;
        group.throughput(Throughput::Elements(n));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                seq += 1;
                core.handle_deliver("room", 1, seq, data.clone(), Default::default());
                while let Some(output) = core.poll_output() {
                    if let Output::Deliver(f) = output {
                        for &conn in f.conns.iter() {
                            let _ = queues[conn as usize].try_send(f.frame.clone());
                        }
                    }
                }
                // Keep the queues from filling: drain what this iteration queued.
                for rx in receivers.iter_mut() {
                    let _ = rx.try_recv();
                }
            })
        });
    }
    group.finish();
}

fn bench_sequencing(c: &mut Criterion) {
    let mut core = DistributorCore::new(1, 1 << 20);
    core.handle_registered(1);
    core.handle_watch(tokio::time::Instant::now(), snapshot(1));
    for edge in 1..=4 {
        core.handle_edge_up(edge);
    }
    let topics: Vec<String> = (0..1000).map(|i| format!("room/{i}")).collect();
    for t in &topics {
        for edge in 1..=4 {
            core.handle_interest(edge, t, 10, 1, 0, (0, 0))
                .unwrap_or_default();
        }
    }
    let mut i = 0usize;
    c.bench_function("distributor/sequence_1k_topics_4_edges", |b| {
        b.iter(|| {
            i = (i + 1) % topics.len();
            core.sequence(black_box(&topics[i]), 0).map(|_| ())
        })
    });
}

criterion_group!(
    benches,
    bench_slot,
    bench_client,
    bench_relay,
    bench_fanout,
    bench_sequencing
);
criterion_main!(benches);
