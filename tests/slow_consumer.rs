//! A consumer that never reads its socket: deliveries stop at the connection's outbound
//! high watermark and the rest of the messages stay in the queue, so the broker's memory
//! does not grow with what the consumer fails to read.

mod common;
use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{basic, AMQPClass};
use amq_protocol::types::FieldTable as RawTable;
use common::raw::Raw;
use common::*;
use lapin::options::*;
use std::sync::atomic::Ordering;
use std::time::Duration;

const HIGH_WATERMARK: usize = 256 * 1024;
const MESSAGES: usize = 10_000;
const BODY: usize = 4096;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ack_consumer_that_never_reads_costs_bounded_memory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = test_config(dir.path());
    cfg.outbound_high_watermark = HIGH_WATERMARK;
    let b = start_broker_with(cfg, dir).await;
    let broker = b.handle.as_ref().expect("running").broker.clone();

    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    declare(&ch, "slow").await;

    let mut r = Raw::open_with(b.addr(), 131_072, 0).await;
    let raw_addr = r.sock.local_addr().expect("local addr");
    r.open_channel(1).await;
    r.send(AMQPFrame::Method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: "slow".into(),
            consumer_tag: "sink".into(),
            no_local: false,
            no_ack: true,
            exclusive: false,
            nowait: false,
            arguments: RawTable::default(),
        })),
    ))
    .await;
    match r.recv().await {
        Some(AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_)))) => {}
        other => panic!("expected basic.consume-ok, got {other:?}"),
    }
    // From here on the raw client never reads.

    within(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm.select");
    let body = vec![b'x'; BODY];
    for _ in 0..MESSAGES {
        within(
            "publish",
            ch.basic_publish(
                "".into(),
                "slow".into(),
                BasicPublishOptions::default(),
                &body,
                lapin::BasicProperties::default(),
            ),
        )
        .await
        .expect("publish");
    }
    // Every publish confirmed, none returned or nacked.
    assert!(within("confirms", ch.wait_for_confirms())
        .await
        .expect("confirms")
        .is_empty());

    let sink = broker
        .connections
        .iter()
        .find(|c| c.peer == raw_addr)
        .map(|c| c.clone())
        .expect("the raw consumer's connection");
    // What the kernel buffers on both sides of a loopback socket, generously: beyond it,
    // deliveries must wait in the queue.
    let in_flight_max = 16 * 1024 * 1024;
    let frame = BODY + 512;
    // Sample for a while: the buffer never goes past the watermark by more than a frame,
    // and most messages stay ready in the queue.
    for _ in 0..50 {
        let pending = sink.out.pending();
        assert!(
            pending <= HIGH_WATERMARK + frame,
            "outbound buffer grew to {pending} bytes"
        );
        let ready = ready_count(&ch, "slow").await as usize;
        assert!(
            ready * BODY + in_flight_max >= MESSAGES * BODY,
            "only {ready} of {MESSAGES} messages left in the queue"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!sink.out.is_closing());
    assert!(!sink.blocked.load(Ordering::Relaxed));
    drop(r);
}
