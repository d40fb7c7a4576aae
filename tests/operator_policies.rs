//! Operator policies: set by administrators over `/api/operator-policies`, limited to numeric
//! queue limits, merged with user policies and queue arguments so that the smaller value
//! wins, shown on queues, kept across a restart and carried in definitions as RabbitMQ's
//! `operator_policy` runtime parameters.

mod common;
use common::http::{api, api_as, Api};
use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

async fn declare_with(ch: &lapin::Channel, name: &str, max_length: Option<i32>) {
    let mut args = FieldTable::default();
    if let Some(n) = max_length {
        args.insert("x-max-length".into(), AMQPValue::LongInt(n));
    }
    within(
        "queue.declare",
        ch.queue_declare(name.into(), QueueDeclareOptions::default(), args),
    )
    .await
    .unwrap();
}

async fn queue(a: &Api, name: &str) -> Value {
    a.ok(&format!("/api/queues/%2F/{name}")).await
}

/// Wait, bounded, until the management API shows `depth` ready messages in a queue.
async fn wait_depth(a: &Api, name: &str, depth: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = queue(a, name).await["messages_ready"].as_u64().unwrap();
        if now == depth {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: {now} messages, expected {depth}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn policies_of(q: &Value) -> (Value, Value, Value) {
    (
        q["policy"].clone(),
        q["operator_policy"].clone(),
        q["effective_policy_definition"].clone(),
    )
}

#[tokio::test]
async fn operator_policies_cap_what_users_and_arguments_ask_for() {
    let b = start_broker().await;
    let a = api(&b);
    let c = connect(&b).await;
    let ch = channel(&c).await;
    declare_with(&ch, "jobs.a", None).await;
    declare_with(&ch, "jobs.b", Some(1)).await;
    declare_with(&ch, "jobs.c", Some(10)).await;
    declare_with(&ch, "other", None).await;

    let cap = json!({"pattern": "^jobs\\.", "definition": {"max-length": 2, "message-ttl": 60000},
                     "priority": 1, "apply-to": "queues"});
    assert_eq!(
        a.put("/api/operator-policies/%2F/cap", cap.clone()).await.0,
        201
    );
    assert_eq!(a.put("/api/operator-policies/%2F/cap", cap).await.0, 204);
    let row = json!({"vhost": "/", "name": "cap", "pattern": "^jobs\\.", "apply-to": "queues",
                     "definition": {"max-length": 2, "message-ttl": 60000}, "priority": 1});
    assert_eq!(a.ok("/api/operator-policies").await, json!([row.clone()]));
    assert_eq!(
        a.ok("/api/operator-policies/%2F").await,
        json!([row.clone()])
    );
    assert_eq!(a.ok("/api/operator-policies/%2F/cap").await, row);
    // They are not user policies.
    assert_eq!(a.ok("/api/policies").await, json!([]));

    // The cap applies where the queue's own limit is higher or absent.
    for q in ["jobs.a", "jobs.b", "jobs.c", "other"] {
        for i in 0..5 {
            publish(&ch, "", q, format!("{i}").as_bytes()).await;
        }
    }
    wait_depth(&a, "other", 5).await;
    wait_depth(&a, "jobs.a", 2).await;
    wait_depth(&a, "jobs.b", 1).await;
    wait_depth(&a, "jobs.c", 2).await;
    assert_eq!(
        policies_of(&queue(&a, "jobs.a").await),
        (
            Value::Null,
            json!("cap"),
            json!({"max-length": 2, "message-ttl": 60000})
        )
    );
    assert_eq!(
        policies_of(&queue(&a, "other").await),
        (Value::Null, Value::Null, json!({}))
    );

    // With a user policy too: each key takes the smaller value, the rest from either.
    let (s, _) = a
        .put(
            "/api/policies/%2F/up",
            json!({"pattern": "^jobs\\.a$", "definition": {"max-length": 1, "message-ttl": 90000,
                   "dead-letter-exchange": "dlx"}, "apply-to": "queues"}),
        )
        .await;
    assert_eq!(s, 201);
    assert_eq!(
        policies_of(&queue(&a, "jobs.a").await),
        (
            json!("up"),
            json!("cap"),
            json!({"max-length": 1, "message-ttl": 60000, "dead-letter-exchange": "dlx"})
        )
    );
    wait_depth(&a, "jobs.a", 1).await;
    assert_eq!(a.delete("/api/policies/%2F/up").await.0, 204);
    assert_eq!(
        policies_of(&queue(&a, "jobs.a").await).1,
        json!("cap"),
        "the operator policy stays when the user policy goes"
    );

    // Without the operator policy jobs.c takes up to its own ten again.
    assert_eq!(a.delete("/api/operator-policies/%2F/cap").await.0, 204);
    assert_eq!(a.ok("/api/operator-policies").await, json!([]));
    for i in 0..5 {
        publish(&ch, "", "jobs.c", format!("{i}").as_bytes()).await;
    }
    wait_depth(&a, "jobs.c", 7).await;
    assert_eq!(
        policies_of(&queue(&a, "jobs.c").await),
        (Value::Null, Value::Null, json!({}))
    );

    // A message TTL cap shortens a long x-message-ttl: the message expires.
    let mut args = FieldTable::default();
    args.insert("x-message-ttl".into(), AMQPValue::LongInt(600_000));
    within(
        "queue.declare",
        ch.queue_declare("stale".into(), QueueDeclareOptions::default(), args),
    )
    .await
    .unwrap();
    a.put(
        "/api/operator-policies/%2F/fresh",
        json!({"pattern": "^stale$", "definition": {"message-ttl": 50}}),
    )
    .await;
    publish(&ch, "", "stale", b"old").await;
    wait_depth(&a, "stale", 0).await;
    assert_eq!(
        queue(&a, "stale").await["effective_policy_definition"],
        json!({"message-ttl": 50})
    );
}

#[tokio::test]
async fn operator_policies_refuse_bad_input_and_non_administrators() {
    let b = start_broker().await;
    let a = api(&b);
    let put = |body: Value| {
        let a = &a;
        async move { a.put("/api/operator-policies/%2F/p", body).await.0 }
    };
    // Only numeric queue limits, with valid values.
    assert_eq!(
        put(json!({"pattern": ".*", "definition": {"dead-letter-exchange": "x"}})).await,
        400
    );
    assert_eq!(
        put(json!({"pattern": ".*", "definition": {"overflow": "reject-publish"}})).await,
        400
    );
    assert_eq!(
        put(json!({"pattern": ".*", "definition": {"expires": 0}})).await,
        400
    );
    assert_eq!(
        put(json!({"pattern": ".*", "definition": {"max-length": -1}})).await,
        400
    );
    assert_eq!(
        put(json!({"pattern": "(", "definition": {"max-length": 1}})).await,
        400
    );
    assert_eq!(put(json!({"pattern": ".*", "definition": {}})).await, 400);
    assert_eq!(
        put(json!({"pattern": ".*", "definition": {"max-in-memory-length": 5, "max-in-memory-bytes": 9,
                   "delivery-limit": 3, "expires": 1000, "max-length-bytes": 100}}))
        .await,
        201
    );
    let (s, body) = a
        .put(
            "/api/operator-policies/nowhere/p",
            json!({"pattern": ".*", "definition": {"expires": 1}}),
        )
        .await;
    assert_eq!(s, 404, "{body}");
    assert_eq!(a.get("/api/operator-policies/%2F/nope").await.0, 404);
    assert_eq!(a.delete("/api/operator-policies/%2F/nope").await.0, 404);
    assert_eq!(a.get("/api/operator-policies/nowhere").await.0, 404);

    // A policymaker or monitoring user may list them, but only an administrator reads one
    // or changes them.
    for (user, tag) in [("pm", "policymaker"), ("mon", "monitoring")] {
        a.put(
            &format!("/api/users/{user}"),
            json!({"password": "pw", "tags": tag}),
        )
        .await;
        a.put(
            &format!("/api/permissions/%2F/{user}"),
            json!({"configure": ".*", "write": ".*", "read": ".*"}),
        )
        .await;
        let u = api_as(&b, user, "pw");
        assert_eq!(
            u.ok("/api/operator-policies")
                .await
                .as_array()
                .unwrap()
                .len(),
            1
        );
        assert_eq!(u.get("/api/operator-policies/%2F/p").await.0, 403);
        assert_eq!(
            u.put(
                "/api/operator-policies/%2F/q",
                json!({"pattern": ".*", "definition": {"expires": 1}})
            )
            .await
            .0,
            403
        );
        assert_eq!(u.delete("/api/operator-policies/%2F/p").await.0, 403);
    }
    // The policymaker still sets user policies.
    assert_eq!(
        api_as(&b, "pm", "pw")
            .put(
                "/api/policies/%2F/mine",
                json!({"pattern": ".*", "definition": {"expires": 1000}})
            )
            .await
            .0,
        201
    );
    assert_eq!(a.ok("/api/operator-policies").await[0]["name"], "p");
}

#[tokio::test]
async fn operator_policies_survive_a_restart_and_travel_in_definitions() {
    let mut b = start_broker().await;
    let a = api(&b);
    let c = connect(&b).await;
    let ch = channel(&c).await;
    declare_durable(&ch, "jobs.kept").await;
    a.put(
        "/api/operator-policies/%2F/cap",
        json!({"pattern": "^jobs\\.", "definition": {"max-length": 2}, "apply-to": "queues"}),
    )
    .await;
    drop(c);
    b.stop().await;
    let dir = b.dir;
    let b = start_broker_with(test_config(dir.path()), dir).await;
    let a = api(&b);
    assert_eq!(
        a.ok("/api/operator-policies/%2F/cap").await["pattern"],
        "^jobs\\."
    );
    assert_eq!(
        queue(&a, "jobs.kept").await["operator_policy"],
        "cap",
        "a recovered queue is capped again"
    );
    let c = connect(&b).await;
    let ch = channel(&c).await;
    for i in 0..5 {
        publish(&ch, "", "jobs.kept", format!("{i}").as_bytes()).await;
    }
    wait_depth(&a, "jobs.kept", 2).await;

    // Exported as RabbitMQ does: a runtime parameter of component operator_policy, in the
    // whole export and the vhost's.
    let parameter = json!({"vhost": "/", "component": "operator_policy", "name": "cap",
                           "value": {"pattern": "^jobs\\.", "definition": {"max-length": 2},
                                     "priority": 0, "apply-to": "queues"}});
    let all = a.ok("/api/definitions").await;
    assert_eq!(all["parameters"], json!([parameter.clone()]));
    assert_eq!(all["policies"], json!([]));
    let one = a.ok("/api/definitions/%2F").await;
    assert_eq!(one["parameters"], json!([parameter]));

    // Imported back, and from a RabbitMQ 3.10 export.
    assert_eq!(a.delete("/api/operator-policies/%2F/cap").await.0, 204);
    assert_eq!(a.post("/api/definitions", all).await.0, 204);
    assert_eq!(a.ok("/api/operator-policies/%2F/cap").await["name"], "cap");
    let rabbit = json!({"rabbit_version": "3.10.8", "parameters": [
        {"value": {"pattern": "^op", "definition": {"max-length": 5, "message-ttl": 60000},
                   "priority": 1, "apply-to": "queues"},
         "vhost": "/", "component": "operator_policy", "name": "op1"}]});
    let (s, body) = a.post("/api/definitions", rabbit).await;
    assert_eq!(s, 204, "{body}");
    assert_eq!(
        a.ok("/api/operator-policies/%2F/op1").await["definition"],
        json!({"max-length": 5, "message-ttl": 60000})
    );
    // A bad one in a file is refused with the reason.
    let (s, _) = a
        .post(
            "/api/definitions/%2F",
            json!({"parameters": [{"vhost": "/", "component": "operator_policy", "name": "x",
                   "value": {"pattern": ".*", "definition": {"overflow": "drop-head"}}}]}),
        )
        .await;
    assert_eq!(s, 400);
}
