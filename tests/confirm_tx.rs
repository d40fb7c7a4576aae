//! Publisher confirms and transactions.

mod common;
use common::*;
use lapin::options::*;
use lapin::types::FieldTable;

async fn get(ch: &lapin::Channel, q: &str) -> Option<lapin::message::BasicGetMessage> {
    within(
        "basic.get",
        ch.basic_get(q.into(), BasicGetOptions { no_ack: false }),
    )
    .await
    .expect("get")
}

#[tokio::test]
async fn confirms_ack_every_publish() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    declare(&ch, "cf").await;
    within(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .unwrap();
    let mut confirms = Vec::new();
    for i in 0..500u32 {
        let c = within(
            "publish",
            ch.basic_publish(
                "".into(),
                "cf".into(),
                BasicPublishOptions::default(),
                &i.to_be_bytes(),
                lapin::BasicProperties::default(),
            ),
        )
        .await
        .unwrap();
        confirms.push(c);
    }
    for c in confirms {
        assert!(within("confirm", c).await.unwrap().is_ack());
    }
    // Unroutable, non-mandatory messages are confirmed too.
    let c = within(
        "publish",
        ch.basic_publish(
            "amq.direct".into(),
            "nobody".into(),
            BasicPublishOptions::default(),
            b"x",
            lapin::BasicProperties::default(),
        ),
    )
    .await
    .unwrap();
    assert!(within("confirm", c).await.unwrap().is_ack());
    let q = within(
        "passive",
        ch.queue_declare(
            "cf".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(q.message_count(), 500);
}

#[tokio::test]
async fn confirm_and_tx_modes_exclude_each_other() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    within(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .unwrap();
    let err = within("tx.select", ch.tx_select()).await.expect_err("406");
    assert_eq!(reply_code(&err), Some(406));

    let ch = channel(&conn).await;
    within("tx.select", ch.tx_select()).await.unwrap();
    let err = within(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect_err("406");
    assert_eq!(reply_code(&err), Some(406));
}

#[tokio::test]
async fn commit_without_select_is_406() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    let err = within("tx.commit", ch.tx_commit()).await.expect_err("406");
    assert_eq!(reply_code(&err), Some(406));
}

#[tokio::test]
async fn tx_publishes_appear_only_at_commit_and_vanish_on_rollback() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    declare(&ch, "txq").await;
    let observer = channel(&conn).await;
    within("tx.select", ch.tx_select()).await.unwrap();
    publish(&ch, "", "txq", b"one").await;
    assert!(
        get(&observer, "txq").await.is_none(),
        "not visible before commit"
    );
    within("commit", ch.tx_commit()).await.unwrap();
    let m = get(&observer, "txq").await.expect("visible after commit");
    assert_eq!(m.delivery.data, b"one");
    within("ack", m.delivery.ack(BasicAckOptions::default()))
        .await
        .unwrap();

    publish(&ch, "", "txq", b"two").await;
    within("rollback", ch.tx_rollback()).await.unwrap();
    within("commit", ch.tx_commit()).await.unwrap();
    assert!(get(&observer, "txq").await.is_none(), "rolled back");
}

#[tokio::test]
async fn tx_acks_apply_at_commit_and_rollback_keeps_them_unacked() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    declare(&ch, "txa").await;
    publish(&ch, "", "txa", b"a").await;
    publish(&ch, "", "txa", b"b").await;
    within("tx.select", ch.tx_select()).await.unwrap();
    let a = get(&ch, "txa").await.expect("a");
    within("ack", a.delivery.ack(BasicAckOptions::default()))
        .await
        .unwrap();
    within("rollback", ch.tx_rollback()).await.unwrap();
    // Still unacked after rollback: acking it again inside a new tx works.
    within(
        "ack",
        ch.basic_ack(a.delivery.delivery_tag, BasicAckOptions::default()),
    )
    .await
    .unwrap();
    within("commit", ch.tx_commit()).await.unwrap();
    // Closing the channel requeues only what is still unacked (nothing).
    within("close", ch.close(200, "bye".into())).await.unwrap();
    let ch = channel(&conn).await;
    let m = get(&ch, "txa").await.expect("b is left");
    assert_eq!(m.delivery.data, b"b");
    assert!(get(&ch, "txa").await.is_none(), "a was acked at commit");
}
