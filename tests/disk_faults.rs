//! Disk errors never produce a positive confirm for a message that is not stored: a
//! failed append answers basic.nack, a failed flush round holds the confirm back until a
//! later round succeeds. Faults are injected into the message log.

mod common;
use common::*;
use lapin::options::*;
use lapin::types::FieldTable;
use std::time::Duration;

#[tokio::test]
async fn failed_writes_nack_and_failed_flushes_hold_confirms_back() {
    let b = start_broker().await;
    let store = b
        .handle
        .as_ref()
        .expect("running")
        .broker
        .store
        .clone()
        .expect("store");
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    within("select", ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .expect("confirm.select");
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    within(
        "declare",
        ch.queue_declare("tasks".into(), durable, FieldTable::default()),
    )
    .await
    .expect("declare");

    // The append fails: the publisher is told with a nack, and nothing is queued.
    store.inject_faults(true, false);
    let c = publish_persistent(&ch, "tasks", b"lost").await;
    assert!(within("nack", c).await.expect("confirm").is_nack());

    // The append works but flushing fails: no confirm while rounds keep failing.
    store.inject_faults(false, true);
    let before = store.failed_rounds();
    let mut c = Box::pin(publish_persistent(&ch, "tasks", b"held").await);
    within("two failed rounds", async {
        while store.failed_rounds() < before + 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        futures_lite::future::poll_once(&mut c).await.is_none(),
        "no confirm while the message is not on disk"
    );

    // The disk recovers: the held confirm arrives as an ack.
    store.inject_faults(false, false);
    assert!(within("ack", c).await.expect("confirm").is_ack());
    assert_eq!(
        ready_count(&ch, "tasks").await,
        1,
        "only the acked message is queued"
    );
}
