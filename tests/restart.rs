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
