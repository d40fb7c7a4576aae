//! Users, vhosts and permissions over AMQP: which permission each method needs (RabbitMQ's
//! access-control table), the 403 and 530 texts, the default exchange checked as
//! `amq.default`, vhosts created and deleted at runtime, RabbitMQ-format password hashes,
//! and everything surviving a restart.

mod common;
use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use warrenmq::auth::{password, PermissionRecord, User};
use warrenmq::broker::vhosts::VhostRecord;
use warrenmq::broker::Broker;

fn broker(b: &TestBroker) -> &std::sync::Arc<Broker> {
    &b.handle.as_ref().expect("running").broker
}

fn add_user(b: &TestBroker, name: &str, pass: &str, tags: &[&str]) {
    broker(b).auth.put_user(User {
        name: name.into(),
        password_hash: password::hash(pass),
        hashing_algorithm: password::SHA256.into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        limits: Default::default(),
    });
}

fn permit(b: &TestBroker, user: &str, vhost: &str, c: &str, w: &str, r: &str) {
    broker(b)
        .auth
        .set_permission(PermissionRecord {
            user: user.into(),
            vhost: vhost.into(),
            configure: c.into(),
            write: w.into(),
            read: r.into(),
        })
        .expect("valid patterns");
}

fn uri(b: &TestBroker, user: &str, pass: &str, vhost: &str) -> String {
    format!(
        "amqp://{user}:{pass}@{}/{}",
        b.addr(),
        vhost.replace('/', "%2f")
    )
}

async fn connect_as(b: &TestBroker, user: &str, vhost: &str) -> Result<Connection, lapin::Error> {
    within(
        "connect",
        Connection::connect(&uri(b, user, "pw", vhost), ConnectionProperties::default()),
    )
    .await
}

fn refused(kind: &str, name: &str) -> (u16, String) {
    (
        403,
        format!("ACCESS_REFUSED - access to {kind} '{name}' in vhost '/' refused for user 'bob'"),
    )
}

#[tokio::test]
async fn connection_open_needs_permissions_in_the_vhost() {
    let b = start_broker().await;
    add_user(&b, "bob", "pw", &[]);
    assert_eq!(
        failure(connect_as(&b, "bob", "/").await),
        (
            530,
            "NOT_ALLOWED - access to vhost '/' refused for user 'bob'".into()
        )
    );
    assert_eq!(
        failure(connect_as(&b, "bob", "nowhere").await),
        (530, "NOT_ALLOWED - vhost nowhere not found".into())
    );
    permit(&b, "bob", "/", "", "", "");
    let c = connect_as(&b, "bob", "/").await.expect("permitted now");
    c.close(200, "bye".into()).await.unwrap();
}

#[tokio::test]
async fn configure_is_needed_to_declare_and_delete() {
    let b = start_broker().await;
    add_user(&b, "bob", "pw", &[]);
    permit(&b, "bob", "/", "^bob\\.", ".*", ".*");
    let c = connect_as(&b, "bob", "/").await.unwrap();

    let ch = channel(&c).await;
    let r = ch
        .queue_declare(
            "jobs".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert_eq!(failure(r), refused("queue", "jobs"));

    let ch = channel(&c).await;
    ch.queue_declare(
        "bob.jobs".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bob.* is configurable");
    let r = ch
        .exchange_declare(
            "logs".into(),
            lapin::ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert_eq!(failure(r), refused("exchange", "logs"));

    // Passive declares need no permission at all.
    let admin = connect(&b).await;
    let ach = channel(&admin).await;
    declare(&ach, "shared").await;
    let ch = channel(&c).await;
    let ok = ch
        .queue_declare(
            "shared".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    assert!(ok.is_ok(), "passive declare: {ok:?}");
    let r = ch
        .queue_delete("shared".into(), QueueDeleteOptions::default())
        .await;
    assert_eq!(failure(r), refused("queue", "shared"));
}

#[tokio::test]
async fn write_is_needed_to_publish_and_the_default_exchange_is_amq_default() {
    let b = start_broker().await;
    add_user(&b, "bob", "pw", &[]);
    permit(&b, "bob", "/", ".*", "^amq\\.default$", ".*");
    let c = connect_as(&b, "bob", "/").await.unwrap();
    let ch = channel(&c).await;
    declare(&ch, "q").await;
    publish(&ch, "", "q", b"via default").await;
    let got = ch
        .basic_get("q".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("published through the default exchange");
    assert_eq!(got.delivery.data, b"via default");

    // In confirm mode the refused publish's confirm carries the channel close, so the
    // error is read without racing lapin's own handling of the close.
    within(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .unwrap();
    let r = within(
        "publish",
        ch.basic_publish(
            "amq.fanout".into(),
            "".into(),
            BasicPublishOptions::default(),
            b"no",
            BasicProperties::default(),
        ),
    )
    .await;
    let r = match r {
        Err(e) => Err(e),
        Ok(confirm) => within("confirm", confirm).await.map(|_| ()),
    };
    assert_eq!(failure(r), refused("exchange", "amq.fanout"));
}

#[tokio::test]
async fn read_is_needed_to_consume_get_and_purge() {
    let b = start_broker().await;
    add_user(&b, "bob", "pw", &[]);
    permit(&b, "bob", "/", ".*", ".*", "^mine$");
    let c = connect_as(&b, "bob", "/").await.unwrap();
    let ch = channel(&c).await;
    declare(&ch, "mine").await;
    declare(&ch, "theirs").await;
    ch.basic_get("mine".into(), BasicGetOptions::default())
        .await
        .expect("readable");

    let r = ch
        .basic_get("theirs".into(), BasicGetOptions::default())
        .await;
    assert_eq!(failure(r), refused("queue", "theirs"));
    let ch = channel(&c).await;
    let r = ch
        .basic_consume(
            "theirs".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert_eq!(failure(r), refused("queue", "theirs"));
    let ch = channel(&c).await;
    let r = ch
        .queue_purge("theirs".into(), QueuePurgeOptions::default())
        .await;
    assert_eq!(failure(r), refused("queue", "theirs"));
}

#[tokio::test]
async fn bind_needs_write_on_the_queue_and_read_on_the_exchange() {
    let b = start_broker().await;
    add_user(&b, "bob", "pw", &[]);
    permit(&b, "bob", "/", ".*", "^q$", "^amq\\.direct$");
    let c = connect_as(&b, "bob", "/").await.unwrap();
    let ch = channel(&c).await;
    declare(&ch, "q").await;
    declare(&ch, "other").await;
    ch.queue_bind(
        "q".into(),
        "amq.direct".into(),
        "k".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("write on q, read on amq.direct");
    let r = ch
        .queue_bind(
            "q".into(),
            "amq.topic".into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert_eq!(failure(r), refused("exchange", "amq.topic"));
    let ch = channel(&c).await;
    let r = ch
        .queue_bind(
            "other".into(),
            "amq.direct".into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert_eq!(failure(r), refused("queue", "other"));
    // Exchange-to-exchange: write on the destination, read on the source.
    let ch = channel(&c).await;
    let r = ch
        .exchange_bind(
            "amq.fanout".into(),
            "amq.direct".into(),
            "k".into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert_eq!(failure(r), refused("exchange", "amq.fanout"));
}

#[tokio::test]
async fn a_dead_letter_exchange_needs_write_on_it() {
    let b = start_broker().await;
    add_user(&b, "bob", "pw", &[]);
    permit(&b, "bob", "/", ".*", "^work$", ".*");
    let c = connect_as(&b, "bob", "/").await.unwrap();
    let ch = channel(&c).await;
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-dead-letter-exchange"),
        AMQPValue::LongString("dlx".into()),
    );
    let r = ch
        .queue_declare("work".into(), QueueDeclareOptions::default(), args)
        .await;
    assert_eq!(failure(r), refused("exchange", "dlx"));
}

#[tokio::test]
async fn impersonator_may_set_another_user_id() {
    let b = start_broker().await;
    add_user(&b, "bob", "pw", &["impersonator"]);
    permit(&b, "bob", "/", ".*", ".*", ".*");
    let c = connect_as(&b, "bob", "/").await.unwrap();
    let ch = channel(&c).await;
    declare(&ch, "q").await;
    ch.basic_publish(
        "".into(),
        "q".into(),
        BasicPublishOptions::default(),
        b"x",
        BasicProperties::default().with_user_id("alice".into()),
    )
    .await
    .unwrap();
    let got = within(
        "basic.get",
        ch.basic_get("q".into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .unwrap()
    .expect("accepted");
    assert_eq!(
        got.delivery
            .properties
            .user_id()
            .as_ref()
            .map(|u| u.as_str()),
        Some("alice")
    );
}

#[tokio::test]
async fn vhosts_are_created_and_deleted_at_runtime() {
    let b = start_broker().await;
    let br = broker(&b).clone();
    assert!(br.put_vhost(VhostRecord {
        name: "tenant/a".into(),
        ..Default::default()
    }));
    add_user(&b, "bob", "pw", &[]);
    permit(&b, "bob", "tenant/a", ".*", ".*", ".*");
    let c = connect_as(&b, "bob", "tenant/a").await.expect("new vhost");
    let ch = channel(&c).await;
    declare(&ch, "inside").await;
    assert!(br.vhost("tenant/a").unwrap().queues.contains_key("inside"));
    assert!(br.vhost("/").unwrap().queues.get("inside").is_none());

    assert!(br.delete_vhost("tenant/a"));
    // Its connections are closed with 320.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while c.status().connected() {
        assert!(
            std::time::Instant::now() < deadline,
            "connection not closed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(!br.auth.can_access_vhost("bob", "tenant/a"));
    assert_eq!(failure(connect_as(&b, "bob", "tenant/a").await).0, 530);
}

#[tokio::test]
async fn users_permissions_and_vhosts_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = test_config(dir.path());
    let mut b = start_broker_with(cfg.clone(), tempfile::tempdir().unwrap()).await;
    let br = broker(&b).clone();
    br.put_vhost(VhostRecord {
        name: "prod".into(),
        description: "production".into(),
        ..Default::default()
    });
    // A hash in RabbitMQ's format, as a definitions export carries it.
    let hash = password::hash_with_salt(password::SHA256, &[1, 2, 3, 4], "pw").unwrap();
    br.auth.put_user(User {
        name: "bob".into(),
        password_hash: hash,
        hashing_algorithm: password::SHA256.into(),
        tags: vec!["management".into()],
        limits: Default::default(),
    });
    permit(&b, "bob", "prod", "^a", "^b", "^c");
    {
        let c = connect_as(&b, "bob", "prod").await.unwrap();
        let ch = channel(&c).await;
        declare_durable(&ch, "a-durable").await;
    }
    drop(br);
    b.stop().await;

    let b = start_broker_with(cfg, tempfile::tempdir().unwrap()).await;
    let br = broker(&b);
    let v = br.vhost("prod").expect("vhost recovered");
    assert_eq!(v.settings.read().record.description, "production");
    assert!(v.queues.contains_key("a-durable"), "its queue recovered");
    let u = br.auth.user("bob").expect("user recovered");
    assert_eq!(u.tags, vec!["management".to_string()]);
    let p = br
        .auth
        .permission_record("prod", "bob")
        .expect("permission");
    assert_eq!((p.configure.as_str(), p.write.as_str()), ("^a", "^b"));
    let c = connect_as(&b, "bob", "prod")
        .await
        .expect("password still valid");
    c.close(200, "bye".into()).await.unwrap();
    // guest is still there and still loopback-only (checked in tests/connection.rs).
    assert!(br.auth.user("guest").is_some());
}
