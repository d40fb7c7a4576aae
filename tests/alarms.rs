//! Resource alarms: publishing connections are blocked (connection.blocked to those that
//! asked for it) and their reads paused; consumers keep consuming; when the alarm clears
//! they get connection.unblocked and their held publishes go through. The alarm is driven
//! through the memory watermark, the same path the sampler uses.

mod common;
use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{connection, AMQPClass};
use common::http::api;
use common::raw::{publish_frames, Raw};
use common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::Event;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// Next blocked/unblocked event from a lapin connection's event stream.
async fn next_block_event(events: &mut (impl futures_lite::Stream<Item = Event> + Unpin)) -> Event {
    loop {
        let e = within("connection event", events.next())
            .await
            .expect("event stream ended");
        if matches!(e, Event::ConnectionBlocked(_) | Event::ConnectionUnblocked) {
            return e;
        }
    }
}

#[tokio::test]
async fn memory_alarm_blocks_publishers_not_consumers() {
    let b = start_broker().await;
    let broker = b.handle.as_ref().expect("running").broker.clone();
    let a = api(&b);

    let publisher = connect(&b).await;
    let mut events = Box::pin(publisher.events_listener());
    let pch = channel(&publisher).await;
    declare(&pch, "work").await;
    for i in 0..5 {
        publish(&pch, "", "work", format!("early-{i}").as_bytes()).await;
    }
    let consumer_conn = connect(&b).await;
    let cch = channel(&consumer_conn).await;
    let mut polls = 0;
    while ready_count(&cch, "work").await < 5 {
        polls += 1;
        assert!(polls < 1000, "early messages never queued");
        tokio::task::yield_now().await;
    }

    // Watermark of one byte: the memory alarm goes off at once.
    broker.alarms.set_memory_limit(1);
    assert!(broker.alarms.state().memory);
    let node = &a.ok("/api/nodes").await[0];
    assert_eq!(node["mem_alarm"], true);
    assert_eq!(node["disk_free_alarm"], false);
    assert_eq!(node["mem_limit"], 1);
    let (status, body) = a.get("/api/health/checks/alarms").await;
    assert_eq!(status, 503);
    assert_eq!(body["status"], "failed");
    assert_eq!(body["reason"], "There are alarms in effect in the cluster");
    assert_eq!(body["alarms"][0]["resource"], "memory");
    let metrics_addr = b.handle.as_ref().expect("running").metrics_addr;
    let text = within(
        "scrape",
        reqwest::get(format!("http://{metrics_addr}/metrics")),
    )
    .await
    .expect("scrape")
    .text()
    .await
    .expect("metrics body");
    assert!(text.contains("\nwarrenmq_alarms_memory_used_watermark 1\n"));
    assert!(text.contains("\nwarrenmq_alarms_free_disk_space_watermark 0\n"));
    assert!(text.contains("\nwarrenmq_resident_memory_limit_bytes 1\n"));

    // The next publish blocks the publisher; lapin holds further frames itself.
    let held = tokio::spawn(async move {
        for i in 0..5 {
            pch.basic_publish(
                "".into(),
                "work".into(),
                BasicPublishOptions::default(),
                format!("held-{i}").as_bytes(),
                lapin::BasicProperties::default(),
            )
            .await
            .expect("publish");
        }
        pch
    });
    match next_block_event(&mut events).await {
        Event::ConnectionBlocked(reason) => assert_eq!(reason, "low on memory"),
        other => panic!("expected connection.blocked, got {other:?}"),
    }
    let (_, conns) = a.get("/api/connections").await;
    let states: Vec<&str> = conns
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|c| c["state"].as_str())
        .collect();
    assert!(states.contains(&"blocked"), "{states:?}");

    // A consumers-only connection keeps consuming and acking during the alarm.
    let mut consumer = within(
        "consume",
        cch.basic_consume(
            "work".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("consume");
    for i in 0..5 {
        let d = next(&mut consumer).await;
        assert_eq!(d.data, format!("early-{i}").as_bytes());
        within("ack", d.ack(BasicAckOptions::default()))
            .await
            .expect("ack");
    }
    assert!(!consumer_conn.status().blocked());

    // Clearing the alarm unblocks the publisher and its held messages arrive.
    broker.alarms.set_memory_limit(u64::MAX);
    assert!(matches!(
        next_block_event(&mut events).await,
        Event::ConnectionUnblocked
    ));
    let pch = within("held publishes", held)
        .await
        .expect("publisher task");
    for i in 0..5 {
        let d = next(&mut consumer).await;
        assert_eq!(d.data, format!("held-{i}").as_bytes());
        within("ack", d.ack(BasicAckOptions::default()))
            .await
            .expect("ack");
    }
    assert_eq!(a.ok("/api/health/checks/alarms").await["status"], "ok");
    assert_eq!(a.ok("/api/nodes").await[0]["mem_alarm"], false);
    // Still a working publisher.
    publish(&pch, "", "work", b"after").await;
    assert_eq!(next(&mut consumer).await.data, b"after");
}

#[tokio::test]
async fn disk_alarm_is_reported_as_low_on_disk() {
    let b = start_broker().await;
    let broker = b.handle.as_ref().expect("running").broker.clone();
    let a = api(&b);
    let conn = connect(&b).await;
    let mut events = Box::pin(conn.events_listener());
    let ch = channel(&conn).await;
    declare(&ch, "d").await;
    broker.alarms.set_disk_free_limit(u64::MAX);
    let node = &a.ok("/api/nodes").await[0];
    assert_eq!(node["disk_free_alarm"], true);
    assert_eq!(node["mem_alarm"], false);
    let (status, body) = a.get("/api/health/checks/local-alarms").await;
    assert_eq!(status, 503);
    assert_eq!(body["alarms"][0]["resource"], "disk");
    let ch2 = ch.clone();
    let held = tokio::spawn(async move {
        ch2.basic_publish(
            "".into(),
            "d".into(),
            BasicPublishOptions::default(),
            b"x",
            lapin::BasicProperties::default(),
        )
        .await
        .expect("publish");
    });
    match next_block_event(&mut events).await {
        Event::ConnectionBlocked(reason) => assert_eq!(reason, "low on disk"),
        other => panic!("expected connection.blocked, got {other:?}"),
    }
    broker.alarms.set_disk_free_limit(0);
    assert!(matches!(
        next_block_event(&mut events).await,
        Event::ConnectionUnblocked
    ));
    within("held publish", held).await.expect("publisher task");
    let mut polls = 0;
    while ready_count(&ch, "d").await < 1 {
        polls += 1;
        assert!(polls < 1000, "held message never queued");
        tokio::task::yield_now().await;
    }
}

/// A client without the `connection.blocked` capability is blocked silently, and a blocked
/// connection is not dropped for missing heartbeats while the broker is not reading it.
#[tokio::test]
async fn blocked_connection_without_capability_survives_heartbeat_timeout() {
    let b = start_broker().await;
    let broker = b.handle.as_ref().expect("running").broker.clone();
    // Heartbeat 1 s: an unblocked silent client would be dropped after 2 s.
    let mut r = Raw::open_with(b.addr(), 4096, 1).await;
    r.open_channel(1).await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    declare(&ch, "hb").await;

    broker.alarms.set_memory_limit(1);
    for f in publish_frames("hb", b"held") {
        r.send(f).await;
    }
    // Wait (bounded) until the broker shows this connection as blocked.
    let mut polls = 0u32;
    while !broker
        .connections
        .iter()
        .any(|c| c.blocked.load(std::sync::atomic::Ordering::Relaxed))
    {
        polls += 1;
        assert!(polls < 10_000, "connection never blocked");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Count the broker's heartbeats (every 0.5 s) for well over two intervals; the raw
    // client sends nothing meanwhile, and must not be told it is blocked.
    let mut seen = Vec::new();
    let mut heartbeats = 0;
    let mut tmp = [0u8; 512];
    while heartbeats < 7 {
        let n = within("broker heartbeats", r.sock.read(&mut tmp))
            .await
            .expect("read");
        assert!(n > 0, "blocked connection was closed");
        seen.extend_from_slice(&tmp[..n]);
        heartbeats = seen
            .windows(8)
            .filter(|w| *w == [8, 0, 0, 0, 0, 0, 0, 0xCE])
            .count();
    }
    let blocked_method = [0u8, 10, 0, 60];
    assert!(
        !seen.windows(4).any(|w| w == blocked_method),
        "connection.blocked sent to a client that did not ask for it"
    );

    broker.alarms.set_memory_limit(u64::MAX);
    // Reads resume: the held publish is routed and the connection answers again.
    let mut polls = 0;
    while ready_count(&ch, "hb").await < 1 {
        polls += 1;
        assert!(polls < 1000, "held publish never routed");
        tokio::task::yield_now().await;
    }
    r.send(AMQPFrame::Method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        })),
    ))
    .await;
    let close_ok = [0u8, 10, 0, 51];
    let rest = r.read_to_close().await;
    assert!(
        rest.windows(4).any(|w| w == close_ok),
        "no close-ok after unblocking"
    );
}
