"""The task-pipeline pattern through pika: priorities, per-message TTL, rejection to a
dead-letter queue, a DLQ consumer reading the death reason, and a short-TTL task that
expires behind a long one.
"""

from __future__ import annotations

import json
import threading

import pika
from conftest import poll

PRIORITIES = [1, 9, 5, 9, 1, 5, 0, 9]


def test_pipeline_priorities_rejections_and_dlq(names, connect):
    dlx = names.exchange("dlx")
    dlq = names.queue("failed")
    tasks = names.queue("agent_tasks")
    conn = connect()
    ch = conn.channel()
    ch.confirm_delivery()
    ch.exchange_declare(dlx, "direct")
    ch.queue_declare(dlq)
    ch.queue_bind(dlq, dlx, "failed_tasks")
    ch.queue_declare(tasks, durable=True, arguments={
        "x-dead-letter-exchange": dlx,
        "x-dead-letter-routing-key": "failed_tasks",
        "x-max-priority": 10,
        "x-message-ttl": 300000,
    })
    for i, prio in enumerate(PRIORITIES):
        body = json.dumps({"id": i, "priority": prio, "fail": i % 4 == 3})
        ch.basic_publish("", tasks, body, pika.BasicProperties(
            delivery_mode=2, priority=prio, expiration="60000", content_type="application/json"))

    processed, rejected = [], []
    done = threading.Event()

    def worker():
        wconn = connect()
        wch = wconn.channel()
        wch.basic_qos(prefetch_count=3)

        def on_message(c, method, props, body):
            task = json.loads(body)
            if task["fail"]:
                rejected.append(task["id"])
                c.basic_reject(method.delivery_tag, requeue=False)
            else:
                processed.append(task)
                c.basic_ack(method.delivery_tag)
            if len(processed) + len(rejected) == len(PRIORITIES):
                done.set()
                c.stop_consuming()

        wch.basic_consume(tasks, on_message)
        wconn.call_later(10, wch.stop_consuming)
        wch.start_consuming()

    # Connections are not thread-safe: the worker opens and uses its own in the main
    # thread here, since all tasks were queued before it starts (priority order is then
    # fully determined).
    worker()
    assert done.is_set(), "worker did not see every task"
    seen_priorities = [t["priority"] for t in processed]
    assert seen_priorities == sorted(seen_priorities, reverse=True), seen_priorities
    assert sorted(rejected) == [3, 7]

    deaths = []
    for _ in range(2):
        method, props, body = poll(lambda: (lambda r: r if r[0] else None)(ch.basic_get(dlq, auto_ack=True)))
        death = props.headers["x-death"][0]
        deaths.append((json.loads(body)["id"], death["reason"], death["queue"], death["count"]))
        assert props.expiration is None
        assert death["original-expiration"] == "60000"
        assert props.headers["x-first-death-reason"] == "rejected"
    assert sorted(deaths) == [(3, "rejected", tasks, 1), (7, "rejected", tasks, 1)]


def test_short_ttl_task_expires_behind_a_long_one(names, connect):
    dlq = names.queue("expired")
    q = names.queue("ttl")
    conn = connect()
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare(dlq)
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq})
    ch.basic_publish("", q, b"long", pika.BasicProperties(expiration="60000"))
    ch.basic_publish("", q, b"short", pika.BasicProperties(expiration="150"))
    method, props, body = poll(lambda: (lambda r: r if r[0] else None)(ch.basic_get(dlq, auto_ack=True)))
    assert body == b"short"
    assert props.headers["x-death"][0]["reason"] == "expired"
    assert ch.queue_declare(q, passive=True).method.message_count == 1
