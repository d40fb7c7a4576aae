//! Direct reply-to as RabbitMQ 3.10: the `amq.rabbitmq.reply-to` pseudo-queue, the rewrite
//! of `reply_to`, replies delivered straight to the requester's channel, and what happens
//! to a name whose consumer is gone.

mod common;

use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;

const REPLY_TO: &str = "amq.rabbitmq.reply-to";

async fn consume_replies(ch: &lapin::Channel, tag: &str) -> lapin::Consumer {
    within(
        "reply consume",
        ch.basic_consume(
            REPLY_TO.into(),
            tag.into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("reply consumer")
}

async fn confirm_select(ch: &lapin::Channel) {
    within(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm mode");
}

/// Publish a request to queue `q` with `reply_to = amq.rabbitmq.reply-to`.
async fn request(ch: &lapin::Channel, q: &str, body: &[u8]) {
    within(
        "request publish",
        ch.basic_publish(
            "".into(),
            q.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default()
                .with_reply_to(REPLY_TO.into())
                .with_correlation_id("c-1".into()),
        ),
    )
    .await
    .expect("publish");
}

/// The request as the responder sees it (basic.get from another channel).
async fn fetch_request(ch: &lapin::Channel, q: &str) -> lapin::message::BasicGetMessage {
    within(
        "basic.get",
        ch.basic_get(q.into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .expect("get")
    .expect("a request is waiting")
}

/// The rewritten reply-to name a requester channel gets, read off a request it publishes.
async fn reply_name(requester: &lapin::Channel, responder: &lapin::Channel) -> String {
    declare(responder, "names").await;
    request(requester, "names", b"who am i").await;
    let m = fetch_request(responder, "names").await;
    m.delivery
        .properties
        .reply_to()
        .as_ref()
        .expect("reply_to kept")
        .as_str()
        .to_string()
}

/// Publish a reply to `name` under confirms; returns (acked, returned reply code).
async fn reply(
    ch: &lapin::Channel,
    name: &str,
    body: &[u8],
    mandatory: bool,
) -> (bool, Option<u16>) {
    let confirm = within(
        "reply publish",
        ch.basic_publish(
            "".into(),
            name.into(),
            BasicPublishOptions {
                mandatory,
                ..Default::default()
            },
            body,
            BasicProperties::default()
                .with_correlation_id("c-1".into())
                .with_content_type("text/plain".into()),
        ),
    )
    .await
    .expect("publish");
    let c = within("reply confirm", confirm).await.expect("confirm");
    let acked = c.is_ack();
    let returned = c.take_message().map(|m| m.reply_code);
    (acked, returned)
}

async fn passive(ch: &lapin::Channel, name: &str) -> Result<(u32, u32), lapin::Error> {
    within(
        "passive declare",
        ch.queue_declare(
            name.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .map(|q| (q.message_count(), q.consumer_count()))
}

#[tokio::test]
async fn request_reply_round_trip() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let requester = channel(&conn).await;
    let responder = channel(&conn).await;
    confirm_select(&responder).await;
    declare(&responder, "rpc").await;
    let mut replies = consume_replies(&requester, "replies").await;
    request(&requester, "rpc", b"2+2").await;

    let req = fetch_request(&responder, "rpc").await;
    let name = req
        .delivery
        .properties
        .reply_to()
        .as_ref()
        .expect("reply_to")
        .as_str()
        .to_string();
    let token = name
        .strip_prefix("amq.rabbitmq.reply-to.")
        .unwrap_or_else(|| panic!("rewritten to a reply-to name: {name}"));
    assert!(token.len() >= 16, "token too short: {token}");
    assert!(
        token
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
        "URL-safe token: {token}"
    );
    assert_eq!(
        req.delivery
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.as_str()),
        Some("c-1"),
        "other properties kept"
    );
    assert_eq!(req.delivery.data, b"2+2");

    // The live name exists for passive declares, as does the pseudo-queue.
    assert_eq!(passive(&responder, &name).await.expect("live name"), (0, 0));
    assert_eq!(
        passive(&responder, REPLY_TO).await.expect("pseudo-queue"),
        (0, 0)
    );

    // A mandatory reply is routed (no basic.return) and confirmed.
    let (acked, returned) = reply(&responder, &name, b"4", true).await;
    assert!(acked);
    assert_eq!(returned, None, "a reply to a live name is routed");
    let d = next(&mut replies).await;
    assert_eq!(d.data, b"4");
    assert_eq!(d.exchange.as_str(), "");
    assert_eq!(d.routing_key.as_str(), name);
    assert_eq!(
        d.properties.correlation_id().as_ref().map(|c| c.as_str()),
        Some("c-1")
    );
    assert_eq!(
        d.properties.content_type().as_ref().map(|c| c.as_str()),
        Some("text/plain"),
        "the reply's own properties"
    );
    assert!(!d.redelivered);
}

#[tokio::test]
async fn each_channel_gets_its_own_name_and_replies_go_only_there() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let a = channel(&conn).await;
    let c = channel(&conn).await;
    let responder = channel(&conn).await;
    confirm_select(&responder).await;
    let mut a_replies = consume_replies(&a, "a").await;
    let mut c_replies = consume_replies(&c, "c").await;
    let a_name = reply_name(&a, &responder).await;
    let c_name = reply_name(&c, &responder).await;
    assert_ne!(a_name, c_name);
    reply(&responder, &c_name, b"for c", false).await;
    reply(&responder, &a_name, b"for a", false).await;
    assert_eq!(next(&mut a_replies).await.data, b"for a");
    assert_eq!(next(&mut c_replies).await.data, b"for c");
}

#[tokio::test]
async fn other_reply_to_values_are_left_alone() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    declare(&ch, "plain").await;
    within(
        "publish",
        ch.basic_publish(
            "".into(),
            "plain".into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default().with_reply_to("my-replies".into()),
        ),
    )
    .await
    .expect("publish without a reply consumer is fine");
    let m = fetch_request(&ch, "plain").await;
    assert_eq!(
        m.delivery
            .properties
            .reply_to()
            .as_ref()
            .map(|r| r.as_str()),
        Some("my-replies")
    );
}

#[tokio::test]
async fn reply_consumer_must_be_no_ack() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    let err = within(
        "consume",
        ch.basic_consume(
            REPLY_TO.into(),
            "acking".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect_err("406");
    assert_eq!(reply_code(&err), Some(406), "{err:?}");
    assert!(
        format!("{err:?}").contains("reply consumer cannot acknowledge"),
        "{err:?}"
    );
}

#[tokio::test]
async fn only_one_reply_consumer_per_channel() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    let _first = consume_replies(&ch, "first").await;
    let err = within(
        "second consume",
        ch.basic_consume(
            REPLY_TO.into(),
            "second".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect_err("406");
    assert_eq!(reply_code(&err), Some(406), "{err:?}");
    // Another channel may have its own.
    let other = channel(&conn).await;
    let _ok = consume_replies(&other, "first").await;
}

#[tokio::test]
async fn publishing_with_reply_to_needs_a_reply_consumer() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    confirm_select(&ch).await;
    declare(&ch, "rpc").await;
    let res = within(
        "publish",
        ch.basic_publish(
            "".into(),
            "rpc".into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default().with_reply_to(REPLY_TO.into()),
        ),
    )
    .await;
    let err = match res {
        Ok(confirm) => within("confirm", confirm)
            .await
            .expect_err("channel closed"),
        Err(e) => e,
    };
    assert_eq!(reply_code(&err), Some(406), "{err:?}");
    // Nothing was enqueued.
    let ch2 = channel(&conn).await;
    assert_eq!(ready_count(&ch2, "rpc").await, 0);
}

#[tokio::test]
async fn cancel_kills_the_name() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let requester = channel(&conn).await;
    let responder = channel(&conn).await;
    confirm_select(&responder).await;
    let _replies = consume_replies(&requester, "r").await;
    let name = reply_name(&requester, &responder).await;
    assert!(passive(&responder, &name).await.is_ok());
    within(
        "cancel",
        requester.basic_cancel("r".into(), BasicCancelOptions::default()),
    )
    .await
    .expect("cancel-ok");
    // A reply to the dead name is dropped: confirmed, returned when mandatory.
    let (acked, returned) = reply(&responder, &name, b"late", true).await;
    assert!(acked);
    assert_eq!(returned, Some(312));
    let (acked, returned) = reply(&responder, &name, b"late", false).await;
    assert!(acked && returned.is_none());
    // The name no longer exists (a 404 closes the channel: use a spare one).
    let spare = channel(&conn).await;
    let err = passive(&spare, &name).await.expect_err("404");
    assert_eq!(reply_code(&err), Some(404), "{err:?}");
    // The channel may consume again, and gets a fresh name.
    let mut again = consume_replies(&requester, "r2").await;
    let fresh = reply_name(&requester, &responder).await;
    assert_ne!(fresh, name);
    reply(&responder, &fresh, b"fresh", false).await;
    let d = next(&mut again).await;
    assert_eq!(d.data, b"fresh");
    assert_eq!(d.routing_key.as_str(), fresh);
}

#[tokio::test]
async fn closing_the_channel_kills_the_name() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let requester = channel(&conn).await;
    let responder = channel(&conn).await;
    confirm_select(&responder).await;
    let _replies = consume_replies(&requester, "r").await;
    let name = reply_name(&requester, &responder).await;
    within("close", requester.close(200, "bye".into()))
        .await
        .expect("closed");
    let (acked, returned) = reply(&responder, &name, b"nobody home", true).await;
    assert!(acked);
    assert_eq!(returned, Some(312));
    let err = passive(&responder, &name).await.expect_err("404");
    assert_eq!(reply_code(&err), Some(404), "{err:?}");
}

#[tokio::test]
async fn unknown_token_is_dropped_or_returned() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    confirm_select(&ch).await;
    let bogus = "amq.rabbitmq.reply-to.bm90LWEtcmVhbC10b2tlbg";
    let (acked, returned) = reply(&ch, bogus, b"?", false).await;
    assert!(acked && returned.is_none(), "dropped silently");
    let (acked, returned) = reply(&ch, bogus, b"?", true).await;
    assert!(acked);
    assert_eq!(returned, Some(312));
    let err = passive(&ch, bogus).await.expect_err("404");
    assert_eq!(reply_code(&err), Some(404), "{err:?}");
}

#[tokio::test]
async fn reply_consumer_tag_cannot_be_reused() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    declare(&ch, "q").await;
    let _replies = consume_replies(&ch, "same").await;
    let err = within(
        "consume",
        ch.basic_consume(
            "q".into(),
            "same".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect_err("530");
    assert_eq!(reply_code(&err), Some(530), "{err:?}");
}

#[tokio::test]
async fn reply_headers_reach_the_requester_unchanged() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let requester = channel(&conn).await;
    let responder = channel(&conn).await;
    let mut replies = consume_replies(&requester, "r").await;
    let name = reply_name(&requester, &responder).await;
    let mut h = FieldTable::default();
    h.insert("status".into(), AMQPValue::LongInt(7));
    within(
        "reply",
        responder.basic_publish(
            "".into(),
            name.as_str().into(),
            BasicPublishOptions::default(),
            b"ok",
            BasicProperties::default().with_headers(h),
        ),
    )
    .await
    .expect("publish");
    let d = next(&mut replies).await;
    let headers = d.properties.headers().as_ref().expect("headers");
    assert_eq!(headers.inner().get("status"), Some(&AMQPValue::LongInt(7)));
}
