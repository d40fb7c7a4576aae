//! Queue micro-benchmarks: dequeue from a 10-level priority queue holding 1M messages vs a
//! plain queue, and the cost of recording TTL deadlines on publish.
//!
//!     cargo bench --bench queue

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::sync::Arc;
use warrenmq::broker::message::{Message, QueuedMessage};
use warrenmq::broker::queue::ready::ReadyList;
use warrenmq::broker::vhost::{QueueDeclare, VHost};
use warrenmq::protocol::{AMQPValue, BasicProperties, FieldTable};

const N: u64 = 1_000_000;

fn filled(levels: u8) -> ReadyList {
    let msgs: Vec<Arc<Message>> = (0..=9u8)
        .map(|p| {
            Message::new(
                String::new(),
                "k".into(),
                BasicProperties::default().with_priority(p),
                Bytes::from_static(b"0123456789abcdef"),
            )
        })
        .collect();
    let mut r = ReadyList::new(levels, None);
    for seq in 0..N {
        r.push(QueuedMessage {
            seq,
            msg: msgs[(seq % 10) as usize].clone(),
            redelivered: false,
            deadline: None,
            delivery_count: 0,
            stored: None,
        });
    }
    r
}

fn dequeue(c: &mut Criterion) {
    let mut g = c.benchmark_group("dequeue_1M");
    g.throughput(Throughput::Elements(N));
    g.sample_size(10);
    for (name, levels) in [("plain", 0u8), ("priority_10_levels", 9u8)] {
        g.bench_function(name, |b| {
            b.iter_batched(
                || filled(levels),
                |mut r| {
                    while let Some(m) = r.pop() {
                        std::hint::black_box(m);
                    }
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

fn publish(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let mut g = c.benchmark_group("publish_100k");
    const M: u64 = 100_000;
    g.throughput(Throughput::Elements(M));
    g.sample_size(10);
    for (name, ttl) in [("no_ttl", None), ("queue_ttl", Some(60_000i32))] {
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let vhost = VHost::new("/", None);
                    let mut args = FieldTable::default();
                    if let Some(ms) = ttl {
                        args.insert("x-message-ttl".into(), AMQPValue::LongInt(ms));
                    }
                    vhost
                        .declare_queue(
                            QueueDeclare {
                                name: "q".into(),
                                passive: false,
                                durable: false,
                                exclusive: false,
                                auto_delete: false,
                                arguments: args,
                                server_named: false,
                            },
                            1,
                        )
                        .unwrap();
                    let q = vhost.queues.get("q").unwrap().clone();
                    let msg = Message::new(
                        String::new(),
                        "q".into(),
                        BasicProperties::default(),
                        Bytes::from_static(b"0123456789abcdef"),
                    );
                    (vhost, q, msg)
                },
                |(_vhost, q, msg)| {
                    for _ in 0..M {
                        q.publish(msg.clone());
                    }
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, dequeue, publish);
criterion_main!(benches);
