//! Publishing, consuming, getting and acknowledging through lapin.

mod common;
use common::*;
use lapin::options::*;
use lapin::types::FieldTable;

#[tokio::test]
async fn publish_consume_ack_roundtrip() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    declare(&ch, "q1").await;
    publish(&ch, "", "q1", b"hello").await;
    let mut consumer = within(
        "consume",
        ch.basic_consume(
            "q1".into(),
            "c1".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    let d = next(&mut consumer).await;
    assert_eq!(d.data, b"hello");
    assert!(!d.redelivered);
    assert_eq!(d.routing_key.as_str(), "q1");
    within("ack", d.ack(BasicAckOptions::default()))
        .await
        .unwrap();
}
