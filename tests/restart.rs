//! Durable definitions survive a restart; transient and exclusive ones do not; a data dir
//! with an unknown format version is refused.

mod common;
use common::*;
use lapin::options::*;
use lapin::types::FieldTable;

#[tokio::test]
async fn durable_definitions_survive_restart() {
    let mut b = start_broker().await;
    {
        let conn = connect(&b).await;
        let ch = channel(&conn).await;
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        within(
            "declare",
            ch.queue_declare("keep".into(), durable, FieldTable::default()),
        )
        .await
        .unwrap();
        declare(&ch, "transient").await;
        within(
            "exclusive",
            ch.queue_declare(
                "mine".into(),
                QueueDeclareOptions {
                    durable: true,
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            ),
        )
        .await
        .unwrap();
        within(
            "exchange",
            ch.exchange_declare(
                "tasks".into(),
                lapin::ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            ),
        )
        .await
        .unwrap();
        within(
            "bind",
            ch.queue_bind(
                "keep".into(),
                "tasks".into(),
                "summarize.#".into(),
                Default::default(),
                FieldTable::default(),
            ),
        )
        .await
        .unwrap();
    }
    b.stop().await;
    let dir = b.dir;
    let cfg = test_config(dir.path());
    let b = start_broker_with(cfg, dir).await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    within(
        "passive keep",
        ch.queue_declare("keep".into(), passive, FieldTable::default()),
    )
    .await
    .expect("durable queue recovered");
    // The binding came back too: a message routed through it arrives.
    publish(&ch, "tasks", "summarize.gpu", b"job").await;
    let m = within(
        "get",
        ch.basic_get("keep".into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .unwrap()
    .expect("routed through the recovered binding");
    assert_eq!(m.delivery.data, b"job");
    let err = within(
        "passive transient",
        ch.queue_declare("transient".into(), passive, FieldTable::default()),
    )
    .await
    .expect_err("transient queue is gone");
    assert_eq!(reply_code(&err), Some(404));
    let ch = channel(&conn).await;
    let err = within(
        "passive exclusive",
        ch.queue_declare("mine".into(), passive, FieldTable::default()),
    )
    .await
    .expect_err("exclusive queue is gone");
    assert_eq!(reply_code(&err), Some(404));
}

#[tokio::test]
async fn unknown_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path().join("sled")).unwrap();
        db.insert("format_version", "99").unwrap();
        db.flush().unwrap();
    }
    let err = warrenmq::server::start(test_config(dir.path()))
        .await
        .err()
        .expect("refuses to start");
    assert!(err.to_string().contains("format version 99"), "{err}");
}

async fn confirm_publish(ch: &lapin::Channel, q: &str, body: &[u8], persistent: bool) {
    let mut props = lapin::BasicProperties::default();
    if persistent {
        props = props.with_delivery_mode(2);
    }
    assert!(confirmed(ch, q, body, props).await);
}

#[tokio::test]
async fn persistent_messages_survive_restart_transient_ones_do_not() {
    let mut b = start_broker().await;
    {
        let conn = connect(&b).await;
        let ch = channel(&conn).await;
        within(
            "confirm.select",
            ch.confirm_select(ConfirmSelectOptions::default()),
        )
        .await
        .unwrap();
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        within(
            "declare",
            ch.queue_declare("jobs".into(), durable, FieldTable::default()),
        )
        .await
        .unwrap();
        confirm_publish(&ch, "jobs", b"p1", true).await;
        confirm_publish(&ch, "jobs", b"t1", false).await;
        confirm_publish(&ch, "jobs", b"p2", true).await;
        confirm_publish(&ch, "jobs", b"p3", true).await;
        // p1 is delivered and left unacked; p2 is acked.
        let p1 = within(
            "get",
            ch.basic_get("jobs".into(), BasicGetOptions { no_ack: false }),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(p1.delivery.data, b"p1");
        within(
            "get t1",
            ch.basic_get("jobs".into(), BasicGetOptions { no_ack: true }),
        )
        .await
        .unwrap()
        .unwrap();
        let p2 = within(
            "get",
            ch.basic_get("jobs".into(), BasicGetOptions { no_ack: false }),
        )
        .await
        .unwrap()
        .unwrap();
        within("ack", p2.delivery.ack(BasicAckOptions::default()))
            .await
            .unwrap();
        // A transient message published after: gone after the restart.
        confirm_publish(&ch, "jobs", b"t2", false).await;
    }
    b.stop().await;
    let dir = b.dir;
    let b = start_broker_with(test_config(dir.path()), dir).await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    let mut got = Vec::new();
    while let Some(m) = within(
        "get",
        ch.basic_get("jobs".into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .unwrap()
    {
        got.push((
            String::from_utf8(m.delivery.data.clone()).unwrap(),
            m.delivery.redelivered,
        ));
    }
    // Only the message delivered before the restart is flagged redelivered.
    assert_eq!(got, vec![("p1".into(), true), ("p3".into(), false)]);
}

#[tokio::test]
async fn a_backlog_beyond_the_memory_budget_is_paged_and_read_back_in_order() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    within(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    within(
        "declare",
        ch.queue_declare("big".into(), durable, FieldTable::default()),
    )
    .await
    .unwrap();
    // 24 MB of persistent bodies: well past the 8 MB a queue keeps in memory.
    for i in 0..24u8 {
        confirm_publish(&ch, "big", &vec![i; 1024 * 1024], true).await;
    }
    for i in 0..24u8 {
        let m = within(
            "get",
            ch.basic_get("big".into(), BasicGetOptions { no_ack: false }),
        )
        .await
        .unwrap()
        .expect("message");
        assert_eq!(m.delivery.data.len(), 1024 * 1024);
        assert!(
            m.delivery.data.iter().all(|b| *b == i),
            "message {i} in order and intact"
        );
        within("ack", m.delivery.ack(BasicAckOptions::default()))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn committed_persistent_transaction_survives_restart() {
    let mut b = start_broker().await;
    {
        let conn = connect(&b).await;
        let ch = channel(&conn).await;
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        within(
            "declare",
            ch.queue_declare("txd".into(), durable, FieldTable::default()),
        )
        .await
        .unwrap();
        within("tx.select", ch.tx_select()).await.unwrap();
        within(
            "publish",
            ch.basic_publish(
                "".into(),
                "txd".into(),
                BasicPublishOptions::default(),
                b"committed",
                lapin::BasicProperties::default().with_delivery_mode(2),
            ),
        )
        .await
        .unwrap();
        within("commit", ch.tx_commit()).await.unwrap();
    }
    b.stop().await;
    let dir = b.dir;
    let b = start_broker_with(test_config(dir.path()), dir).await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    let m = within(
        "get",
        ch.basic_get("txd".into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .unwrap()
    .expect("committed message survived");
    assert_eq!(m.delivery.data, b"committed");
}

#[tokio::test]
async fn delivery_counts_of_stored_messages_survive_a_restart() {
    use lapin::types::AMQPValue;
    let mut b = start_broker().await;
    let mut args = FieldTable::default();
    args.insert("x-delivery-limit".into(), AMQPValue::LongInt(1));
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let requeue = BasicNackOptions {
        requeue: true,
        ..Default::default()
    };
    {
        let conn = connect(&b).await;
        let ch = channel(&conn).await;
        within(
            "confirm.select",
            ch.confirm_select(ConfirmSelectOptions::default()),
        )
        .await
        .unwrap();
        within(
            "declare",
            ch.queue_declare("limited".into(), durable, args.clone()),
        )
        .await
        .unwrap();
        confirm_publish(&ch, "limited", b"poison", true).await;
        // One delivery returned: within the limit of 1.
        let m = within(
            "get",
            ch.basic_get("limited".into(), BasicGetOptions { no_ack: false }),
        )
        .await
        .unwrap()
        .expect("message");
        within("nack", m.delivery.nack(requeue)).await.unwrap();
        assert_eq!(ready_count(&ch, "limited").await, 1);
    }
    b.stop().await;
    let dir = b.dir;
    let b = start_broker_with(test_config(dir.path()), dir).await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    let m = within(
        "get",
        ch.basic_get("limited".into(), BasicGetOptions { no_ack: false }),
    )
    .await
    .unwrap()
    .expect("recovered");
    assert!(m.delivery.redelivered);
    // The second return exceeds the limit only if the first one was remembered.
    within("nack", m.delivery.nack(requeue)).await.unwrap();
    assert_eq!(
        ready_count(&ch, "limited").await,
        0,
        "the delivery count before the restart counts towards x-delivery-limit"
    );
}
