//! Publishing, consuming, getting and acknowledging through lapin.

mod common;
use common::*;
use lapin::options::*;
use lapin::types::FieldTable;

async fn consume(ch: &lapin::Channel, q: &str, tag: &str, no_ack: bool) -> lapin::Consumer {
    within(
        "basic.consume",
        ch.basic_consume(
            q.into(),
            tag.into(),
            BasicConsumeOptions {
                no_ack,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("consume")
}

async fn get(
    ch: &lapin::Channel,
    q: &str,
    no_ack: bool,
) -> Option<lapin::message::BasicGetMessage> {
    within(
        "basic.get",
        ch.basic_get(q.into(), BasicGetOptions { no_ack }),
    )
    .await
    .expect("get")
}

#[tokio::test]
async fn publish_consume_ack_roundtrip() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    declare(&ch, "q1").await;
    publish(&ch, "", "q1", b"hello").await;
    let mut consumer = consume(&ch, "q1", "c1", false).await;
    let d = next(&mut consumer).await;
    assert_eq!(d.data, b"hello");
    assert!(!d.redelivered);
    assert_eq!(d.routing_key.as_str(), "q1");
    assert_eq!(d.delivery_tag, 1);
    within("ack", d.ack(BasicAckOptions::default()))
        .await
        .unwrap();
}

#[tokio::test]
async fn large_bodies_are_split_and_reassembled() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    declare(&ch, "big").await;
    let body: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    publish(&ch, "", "big", &body).await;
    let m = get(&ch, "big", true).await.expect("a message");
    assert_eq!(m.delivery.data.len(), body.len());
    assert!(m.delivery.data == body);
}

#[tokio::test]
async fn properties_survive_the_trip() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    declare(&ch, "props").await;
    let mut headers = FieldTable::default();
    headers.insert(
        "model".into(),
        lapin::types::AMQPValue::LongString("llama".into()),
    );
    headers.insert("n".into(), lapin::types::AMQPValue::LongInt(7));
    let props = lapin::BasicProperties::default()
        .with_content_type("application/json".into())
        .with_correlation_id("abc".into())
        .with_headers(headers.clone())
        .with_priority(4)
        .with_delivery_mode(2);
    within(
        "publish",
        ch.basic_publish(
            "".into(),
            "props".into(),
            BasicPublishOptions::default(),
            b"{}",
            props,
        ),
    )
    .await
    .unwrap();
    let m = get(&ch, "props", true).await.expect("a message");
    let p = &m.delivery.properties;
    assert_eq!(
        p.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert_eq!(p.correlation_id().as_ref().map(|s| s.as_str()), Some("abc"));
    assert_eq!(p.headers().as_ref(), Some(&headers));
    assert_eq!(p.priority(), &Some(4));
    assert_eq!(p.delivery_mode(), &Some(2));
}

#[tokio::test]
async fn get_reports_remaining_count_and_empty() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    declare(&ch, "g").await;
    for i in 0..3u8 {
        publish(&ch, "", "g", &[i]).await;
    }
    let m = get(&ch, "g", false).await.expect("first");
    assert_eq!(m.message_count, 2);
    assert_eq!(m.delivery.data, [0]);
    within("ack", m.delivery.ack(BasicAckOptions::default()))
        .await
        .unwrap();
    assert!(get(&ch, "g", true).await.is_some());
    assert!(get(&ch, "g", true).await.is_some());
    assert!(get(&ch, "g", true).await.is_none());
}

#[tokio::test]
async fn nack_requeue_puts_the_message_back_at_its_place_redelivered() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    declare(&ch, "rq").await;
    for i in 0..3u8 {
        publish(&ch, "", "rq", &[i]).await;
    }
    let first = get(&ch, "rq", false).await.expect("m0");
    assert_eq!(first.delivery.data, [0]);
    within(
        "nack",
        first.delivery.nack(BasicNackOptions {
            requeue: true,
            multiple: false,
        }),
    )
    .await
    .unwrap();
    let again = get(&ch, "rq", false).await.expect("m0 again");
    assert_eq!(again.delivery.data, [0]);
    assert!(again.delivery.redelivered);
    let next_one = get(&ch, "rq", true).await.expect("m1");
    assert_eq!(next_one.delivery.data, [1]);
    assert!(!next_one.delivery.redelivered);
}

#[tokio::test]
async fn reject_without_requeue_drops() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    declare(&ch, "rj").await;
    publish(&ch, "", "rj", b"x").await;
    let m = get(&ch, "rj", false).await.expect("m");
    within(
        "reject",
        m.delivery.reject(BasicRejectOptions { requeue: false }),
    )
    .await
    .unwrap();
    assert!(get(&ch, "rj", true).await.is_none());
}

#[tokio::test]
async fn unknown_delivery_tag_is_406_and_double_ack_too() {
    use amq_protocol::frame::AMQPFrame;
    use amq_protocol::protocol::{basic, AMQPClass};
    let b = start_broker().await;
    let mut r = common::raw::Raw::open(b.addr()).await;
    r.open_channel(1).await;
    let ack = |tag| {
        AMQPFrame::Method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: tag,
                multiple: false,
            })),
        )
    };
    r.send(ack(42)).await;
    assert_eq!(r.expect_channel_close(1).await, (406, 60, 80));

    // Ack the same (real) tag twice: the second is unknown.
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    declare(&ch, "dbl").await;
    publish(&ch, "", "dbl", b"x").await;
    r.open_channel(2).await;
    r.send(AMQPFrame::Method(
        2,
        AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: "dbl".into(),
            no_ack: false,
        })),
    ))
    .await;
    let tag = loop {
        match r.recv().await {
            Some(AMQPFrame::Method(2, AMQPClass::Basic(basic::AMQPMethod::GetOk(g)))) => {
                break g.delivery_tag
            }
            Some(_) => {}
            None => panic!("closed"),
        }
    };
    let ack2 = |tag| {
        AMQPFrame::Method(
            2,
            AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: tag,
                multiple: false,
            })),
        )
    };
    r.send(ack2(tag)).await;
    r.send(ack2(tag)).await;
    assert_eq!(r.expect_channel_close(2).await.0, 406);
}

#[tokio::test]
async fn multiple_ack_and_multiple_zero() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    declare(&ch, "ma").await;
    for i in 0..5u8 {
        publish(&ch, "", "ma", &[i]).await;
    }
    let mut tags = Vec::new();
    for _ in 0..5 {
        tags.push(
            get(&ch, "ma", false)
                .await
                .expect("m")
                .delivery
                .delivery_tag,
        );
    }
    assert_eq!(tags, vec![1, 2, 3, 4, 5]);
    within(
        "ack multiple",
        ch.basic_ack(3, BasicAckOptions { multiple: true }),
    )
    .await
    .unwrap();
    // Tags 4 and 5 are still unacked: nack them all with multiple + tag 0, requeue.
    within(
        "nack all",
        ch.basic_nack(
            0,
            BasicNackOptions {
                multiple: true,
                requeue: true,
            },
        ),
    )
    .await
    .unwrap();
    let a = get(&ch, "ma", true).await.expect("4 back");
    assert_eq!(a.delivery.data, [3]);
    assert!(a.delivery.redelivered);
    assert_eq!(
        get(&ch, "ma", true).await.expect("5 back").delivery.data,
        [4]
    );
    assert!(get(&ch, "ma", true).await.is_none());
}

#[tokio::test]
async fn prefetch_limits_unacked_per_consumer() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    declare(&ch, "pf").await;
    within("qos", ch.basic_qos(2, BasicQosOptions::default()))
        .await
        .unwrap();
    for i in 0..5u8 {
        publish(&ch, "", "pf", &[i]).await;
    }
    let mut c = consume(&ch, "pf", "c", false).await;
    let d1 = next(&mut c).await;
    let d2 = next(&mut c).await;
    assert_eq!((d1.data[0], d2.data[0]), (0, 1));
    // With two unacked, the other three wait in the queue: a passive declare reports them.
    assert_eq!(ready_count(&ch, "pf").await, 3);
    within("ack", d1.ack(BasicAckOptions::default()))
        .await
        .unwrap();
    let d3 = next(&mut c).await;
    assert_eq!(d3.data[0], 2);
    assert_eq!(ready_count(&ch, "pf").await, 2);
}

#[tokio::test]
async fn global_prefetch_is_shared_by_the_channel() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    declare(&ch, "ga").await;
    declare(&ch, "gb").await;
    within("qos", ch.basic_qos(1, BasicQosOptions { global: true }))
        .await
        .unwrap();
    publish(&ch, "", "ga", b"a").await;
    publish(&ch, "", "gb", b"b").await;
    let mut ca = consume(&ch, "ga", "ca", false).await;
    let mut cb = consume(&ch, "gb", "cb", false).await;
    let first = next(&mut ca).await;
    // Only one message may be unacked on the whole channel: gb's message still waits.
    assert_eq!(ready_count(&ch, "gb").await, 1);
    within("ack", first.ack(BasicAckOptions::default()))
        .await
        .unwrap();
    assert_eq!(next(&mut cb).await.data, b"b");
}

#[tokio::test]
async fn unacked_messages_return_when_the_channel_closes() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    declare(&ch, "cl").await;
    publish(&ch, "", "cl", b"task").await;
    let ch2 = channel(&conn).await;
    let m = get(&ch2, "cl", false).await.expect("m");
    assert!(!m.delivery.redelivered);
    within("close", ch2.close(200, "bye".into())).await.unwrap();
    let again = get(&ch, "cl", true).await.expect("requeued");
    assert!(again.delivery.redelivered);
    assert_eq!(again.delivery.data, b"task");
}

#[tokio::test]
async fn unacked_messages_return_when_the_connection_drops() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    declare(&ch, "cd").await;
    publish(&ch, "", "cd", b"task").await;
    {
        let conn2 = connect(&b).await;
        let ch2 = channel(&conn2).await;
        let _m = get(&ch2, "cd", false).await.expect("m");
        within("close", conn2.close(200, "bye".into()))
            .await
            .unwrap();
    }
    let again = get(&ch, "cd", true).await.expect("requeued");
    assert!(again.delivery.redelivered);
}

#[tokio::test]
async fn recover_requeues_everything_unacked() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    declare(&ch, "rc").await;
    publish(&ch, "", "rc", b"1").await;
    publish(&ch, "", "rc", b"2").await;
    get(&ch, "rc", false).await.expect("1");
    get(&ch, "rc", false).await.expect("2");
    within(
        "recover",
        ch.basic_recover(BasicRecoverOptions { requeue: true }),
    )
    .await
    .unwrap();
    let m = get(&ch, "rc", true).await.expect("1 again");
    assert_eq!(m.delivery.data, b"1");
    assert!(m.delivery.redelivered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_between_consumers() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    declare(&ch, "rr").await;
    let mut c1 = consume(&ch, "rr", "c1", true).await;
    let mut c2 = consume(&ch, "rr", "c2", true).await;
    for i in 0..4u8 {
        publish(&ch, "", "rr", &[i]).await;
    }
    let a: Vec<u8> = vec![next(&mut c1).await.data[0], next(&mut c1).await.data[0]];
    let b2: Vec<u8> = vec![next(&mut c2).await.data[0], next(&mut c2).await.data[0]];
    assert_eq!(a, vec![0, 2]);
    assert_eq!(b2, vec![1, 3]);
}

#[tokio::test]
async fn mandatory_unroutable_is_returned_with_312() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    within(
        "confirm",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .unwrap();
    let confirm = within(
        "publish",
        ch.basic_publish(
            "amq.direct".into(),
            "nowhere".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"lost?",
            lapin::BasicProperties::default(),
        ),
    )
    .await
    .unwrap();
    let confirmation = within("confirm", confirm).await.unwrap();
    assert!(confirmation.is_ack());
    let returned = confirmation.take_message().expect("returned message");
    assert_eq!(returned.reply_code, 312);
    assert_eq!(returned.delivery.data, b"lost?");
}

#[tokio::test]
async fn consumer_tag_reuse_is_530() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    declare(&ch, "tag").await;
    let _c = consume(&ch, "tag", "same", false).await;
    let err = within(
        "second consume",
        ch.basic_consume(
            "tag".into(),
            "same".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect_err("tag in use");
    assert_eq!(reply_code(&err), Some(530));
}

#[tokio::test]
async fn exclusive_consumer_locks_out_others_with_403() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    declare(&ch, "ex").await;
    let _first = within(
        "exclusive consume",
        ch.basic_consume(
            "ex".into(),
            "one".into(),
            BasicConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    let ch2 = channel(&conn).await;
    let err = within(
        "second consume",
        ch2.basic_consume(
            "ex".into(),
            "two".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect_err("exclusive");
    assert_eq!(reply_code(&err), Some(403));
}

#[tokio::test]
async fn cancel_stops_deliveries() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    declare(&ch, "cn").await;
    let _c = consume(&ch, "cn", "c", true).await;
    within(
        "cancel",
        ch.basic_cancel("c".into(), BasicCancelOptions::default()),
    )
    .await
    .unwrap();
    publish(&ch, "", "cn", b"stays").await;
    let q = within(
        "passive",
        ch.queue_declare(
            "cn".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(q.message_count(), 1);
    assert_eq!(q.consumer_count(), 0);
}

#[tokio::test]
async fn channel_flow_on_is_ok_and_off_is_540_as_in_rabbitmq() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    declare(&ch, "fl").await;
    within(
        "flow on",
        ch.channel_flow(ChannelFlowOptions { active: true }),
    )
    .await
    .expect("flow-ok");
    let mut c = consume(&ch, "fl", "c", true).await;
    publish(&ch, "", "fl", b"still flowing").await;
    assert_eq!(next(&mut c).await.data, b"still flowing");
    // A client may not pause the broker's deliveries: RabbitMQ closes the connection.
    let r = within(
        "flow off",
        ch.channel_flow(ChannelFlowOptions { active: false }),
    )
    .await;
    assert_eq!(failure(r), (540, "NOT_IMPLEMENTED - active=false".into()));
    still_serving(&b).await;
}

#[tokio::test]
async fn recover_without_requeue_is_540_as_in_rabbitmq() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    let r = within(
        "recover requeue=false",
        ch.basic_recover(BasicRecoverOptions { requeue: false }),
    )
    .await;
    assert_eq!(failure(r), (540, "NOT_IMPLEMENTED - requeue=false".into()));
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    let r = within("recover-async requeue=false", async {
        ch.basic_recover_async(BasicRecoverAsyncOptions { requeue: false })
            .await?;
        // recover-async has no reply: the close comes on the next round trip.
        ch.queue_declare("after".into(), Default::default(), FieldTable::default())
            .await
    })
    .await;
    assert_eq!(failure(r).0, 540);
}

#[tokio::test]
async fn user_id_must_match_the_login() {
    use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
    use amq_protocol::protocol::{basic, AMQPClass};
    let b = start_broker().await;
    let mut r = common::raw::Raw::open(b.addr()).await;
    r.open_channel(1).await;
    r.send(AMQPFrame::Method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: "uid".into(),
            mandatory: false,
            immediate: false,
        })),
    ))
    .await;
    r.send(AMQPFrame::Header(
        1,
        AMQPContentHeader {
            class_id: 60,
            body_size: 1,
            properties: amq_protocol::protocol::BasicProperties::default()
                .with_user_id("mallory".into()),
        },
    ))
    .await;
    r.send(AMQPFrame::Body(1, b"x".to_vec())).await;
    assert_eq!(r.expect_channel_close(1).await, (406, 60, 40));
}
