//! Hostile and malformed input: each gets the right close, and the broker keeps serving.

mod common;
use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{basic, queue, AMQPClass};
use amq_protocol::types::FieldTable;
use common::raw::Raw;
use common::*;

#[tokio::test]
async fn wrong_protocol_header_gets_0_9_1_header_and_close() {
    let b = start_broker().await;
    let mut r = Raw::tcp(b.addr()).await;
    r.send_raw(b"AMQP\x01\x01\x00\x0a").await;
    assert_eq!(r.read_to_close().await, b"AMQP\x00\x00\x09\x01");
    let mut r = Raw::tcp(b.addr()).await;
    r.send_raw(b"GET / HTTP/1.1\r\n\r\n").await;
    assert_eq!(r.read_to_close().await, b"AMQP\x00\x00\x09\x01");
    still_serving(&b).await;
}

#[tokio::test]
async fn frame_larger_than_frame_max_is_501_from_the_header() {
    let b = start_broker().await;
    let mut r = Raw::open(b.addr()).await;
    r.open_channel(1).await;
    // Announce a 1 MB body frame; the payload is never sent.
    r.send_raw(&[3, 0, 1, 0, 0x10, 0, 0]).await;
    assert_eq!(r.expect_connection_close().await.0, 501);
    still_serving(&b).await;
}

/// A body frame of `payload` bytes after a publish of `total` bytes to queue `q`.
async fn publish_split(r: &mut Raw, q: &str, total: usize, payload: usize) {
    let frames = common::raw::publish_frames(q, &vec![b'x'; total]);
    r.send(frames[0].clone()).await;
    r.send(frames[1].clone()).await;
    r.send(AMQPFrame::Body(1, vec![b'x'; payload])).await;
}

#[tokio::test]
async fn body_frame_of_exactly_frame_max_payload_is_accepted_one_more_is_501() {
    let b = start_broker().await;
    // frame_max 4096: a payload of 4096 is a frame of 4104 bytes; RabbitMQ accepts the
    // 8 bytes of overhead as slack, and so do we (amqpstorm splits bodies that way).
    let mut r = Raw::open(b.addr()).await;
    r.open_channel(1).await;
    r.send(AMQPFrame::Method(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "slack".into(),
            passive: false,
            durable: false,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    ))
    .await;
    assert!(matches!(
        r.recv().await,
        Some(AMQPFrame::Method(
            1,
            AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))
        ))
    ));
    publish_split(&mut r, "slack", 4096, 4096).await;
    r.send(AMQPFrame::Method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: "slack".into(),
            no_ack: true,
        })),
    ))
    .await;
    assert!(matches!(
        r.recv().await,
        Some(AMQPFrame::Method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::GetOk(_))
        ))
    ));
    let mut r = Raw::open(b.addr()).await;
    r.open_channel(1).await;
    publish_split(&mut r, "slack", 4097, 4097).await;
    let (code, text, _, _) = r.expect_connection_close_full().await;
    assert_eq!(code, 501);
    assert_eq!(
        text,
        "FRAME_ERROR - frame size 4105 exceeds negotiated frame_max 4096"
    );
    still_serving(&b).await;
}

#[tokio::test]
async fn frame_on_unopened_channel_is_504() {
    let b = start_broker().await;
    let mut r = Raw::open(b.addr()).await;
    r.send(AMQPFrame::Method(
        7,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "x".into(),
            passive: false,
            durable: false,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    ))
    .await;
    let (code, class, method) = r.expect_connection_close().await;
    assert_eq!((code, class, method), (504, 50, 10));
}

#[tokio::test]
async fn unknown_method_is_503_and_server_method_is_540() {
    let b = start_broker().await;
    let mut r = Raw::open(b.addr()).await;
    r.open_channel(1).await;
    r.send_raw(&[1, 0, 1, 0, 0, 0, 4, 0, 99, 0, 1, 0xCE]).await;
    assert_eq!(r.expect_connection_close().await.0, 503);

    let mut r = Raw::open(b.addr()).await;
    r.open_channel(1).await;
    // basic.deliver is sent by brokers, never by clients.
    r.send(AMQPFrame::Method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
            consumer_tag: "x".into(),
            delivery_tag: 1,
            redelivered: false,
            exchange: "".into(),
            routing_key: "".into(),
        })),
    ))
    .await;
    assert_eq!(r.expect_connection_close().await, (540, 60, 60));
    still_serving(&b).await;
}

#[tokio::test]
async fn content_where_a_method_is_expected_and_vice_versa_is_505() {
    let b = start_broker().await;
    let mut r = Raw::open(b.addr()).await;
    r.open_channel(1).await;
    // A body frame with no publish before it.
    r.send_raw(&[3, 0, 1, 0, 0, 0, 2, b'h', b'i', 0xCE]).await;
    assert_eq!(r.expect_connection_close().await.0, 505);

    let mut r = Raw::open(b.addr()).await;
    r.open_channel(1).await;
    r.send(AMQPFrame::Method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: "q".into(),
            mandatory: false,
            immediate: false,
        })),
    ))
    .await;
    // A method where the content header should be.
    r.send(AMQPFrame::Method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: 1,
            global: false,
        })),
    ))
    .await;
    assert_eq!(r.expect_connection_close().await.0, 505);
}

#[tokio::test]
async fn body_longer_than_its_header_is_refused() {
    let b = start_broker().await;
    let mut r = Raw::open(b.addr()).await;
    r.open_channel(1).await;
    r.send(AMQPFrame::Method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: "q".into(),
            mandatory: false,
            immediate: false,
        })),
    ))
    .await;
    r.send(AMQPFrame::Header(
        1,
        amq_protocol::frame::AMQPContentHeader {
            class_id: 60,
            body_size: 2,
            properties: Default::default(),
        },
    ))
    .await;
    r.send(AMQPFrame::Body(1, b"too long".to_vec())).await;
    assert_eq!(r.expect_connection_close().await.0, 505);
    still_serving(&b).await;
}

#[tokio::test]
async fn malformed_field_table_is_502() {
    let b = start_broker().await;
    let mut r = Raw::open(b.addr()).await;
    r.open_channel(1).await;
    // queue.declare "q" with a table whose length runs past the frame.
    let payload: &[u8] = &[0, 50, 0, 10, 0, 0, 1, b'q', 0, 0, 0, 0, 50, 1, b'a'];
    let mut frame = vec![1, 0, 1];
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    frame.push(0xCE);
    r.send_raw(&frame).await;
    assert_eq!(r.expect_connection_close().await.0, 502);
    still_serving(&b).await;
}

#[tokio::test]
async fn deeply_nested_table_is_refused_without_crashing() {
    let b = start_broker().await;
    let mut r = Raw::open_with(b.addr(), 131_072, 0).await;
    r.open_channel(1).await;
    // 20,000 nested arrays in one frame: would overflow a recursive parser's stack.
    let mut inner: Vec<u8> = Vec::new();
    for _ in 0..20_000 {
        let mut v = vec![b'A'];
        v.extend_from_slice(&(inner.len() as u32).to_be_bytes());
        v.extend_from_slice(&inner);
        inner = v;
    }
    let mut table = vec![1, b'a'];
    table.extend_from_slice(&inner);
    let mut payload = vec![0, 50, 0, 10, 0, 0, 1, b'q', 0];
    payload.extend_from_slice(&(table.len() as u32).to_be_bytes());
    payload.extend_from_slice(&table);
    let mut frame = vec![1, 0, 1];
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    frame.push(0xCE);
    r.send_raw(&frame).await;
    assert_eq!(r.expect_connection_close().await.0, 502);
    still_serving(&b).await;
}

#[tokio::test]
async fn missing_frame_end_is_501() {
    let b = start_broker().await;
    let mut r = Raw::open(b.addr()).await;
    r.send_raw(&[8, 0, 0, 0, 0, 0, 0, 0x00]).await;
    assert_eq!(r.expect_connection_close().await.0, 501);
}

#[tokio::test]
async fn immediate_publish_is_540() {
    let b = start_broker().await;
    let mut r = Raw::open(b.addr()).await;
    r.open_channel(1).await;
    r.send(AMQPFrame::Method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: "q".into(),
            mandatory: false,
            immediate: true,
        })),
    ))
    .await;
    assert_eq!(r.expect_connection_close().await, (540, 60, 40));
}

#[tokio::test]
async fn silent_client_is_dropped_after_the_handshake_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.handshake_timeout = 1;
    let b = start_broker_with(cfg, dir).await;
    let mut r = Raw::tcp(b.addr()).await;
    // Half a protocol header, then silence.
    r.send_raw(b"AMQ").await;
    assert!(r.read_to_close().await.is_empty());
}

#[tokio::test]
async fn stalled_half_frame_is_closed_by_the_heartbeat_timeout() {
    let b = start_broker().await;
    let mut r = Raw::open_with(b.addr(), 131_072, 1).await;
    r.open_channel(1).await;
    // A body frame announcing 120 000 payload bytes (within frame_max), 100 of them sent,
    // then silence: the broker holds what arrived, not what was announced, and drops the
    // connection after two missed heartbeat intervals.
    let mut bytes = vec![3u8, 0, 1];
    bytes.extend_from_slice(&120_000u32.to_be_bytes());
    bytes.extend_from_slice(&[0u8; 100]);
    r.send_raw(&bytes).await;
    let rest = r.read_to_close().await;
    // Only the broker's heartbeats came back before the close.
    assert!(rest.chunks(8).all(|c| c == [8, 0, 0, 0, 0, 0, 0, 0xCE]));
    still_serving(&b).await;
}
