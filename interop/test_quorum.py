"""Quorum queues through pika, checked the same way against RabbitMQ 3.10.8: declaration
refusals with RabbitMQ's codes and texts, confirms, x-delivery-count on redelivery, returned
messages ahead of the queue in return order under a delivery limit, the
delivery limit dead-lettering with reason delivery_limit, reject-publish nacks, and
at-least-once dead-lettering that waits for a missing target. Every wait is bounded.
"""

from __future__ import annotations

import pika
import pika.exceptions
import pytest

from conftest import poll

QUORUM = {"x-queue-type": "quorum"}


def get(ch, queue):
    """The next message of `queue` (method, properties, body), polled with a bound: a
    requeued or dead-lettered message may take a moment to be ready again."""
    def once():
        method, props, body = ch.basic_get(queue)
        return (method, props, body) if method is not None else None
    return poll(once, timeout=15.0)


def delivery_count(props):
    return (props.headers or {}).get("x-delivery-count")


def refused(connect, name, **kw):
    ch = connect().channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
        ch.queue_declare(name, **kw)
    return err.value.reply_code, err.value.reply_text


def test_declarations_refused_with_rabbitmqs_texts(names, connect):
    q = names.queue("qq")
    code, text = refused(connect, q, durable=False, arguments=QUORUM)
    assert code == 406 and "invalid property 'non-durable'" in text, text
    code, text = refused(connect, q, durable=True, exclusive=True, arguments=QUORUM)
    assert code == 406 and "invalid property 'exclusive-owner'" in text, text
    code, text = refused(connect, q, durable=True, arguments={**QUORUM, "x-max-priority": 5})
    assert code == 406 and "invalid arg 'x-max-priority'" in text, text
    assert "rabbit_quorum_queue" in text, text
    code, text = refused(connect, q, durable=True,
                         arguments={**QUORUM, "x-quorum-initial-group-size": 0})
    assert code == 406 and "{value_zero,0}" in text, text
    ch = connect().channel()
    ch.queue_declare(q, durable=True, arguments=QUORUM)
    code, text = refused(connect, q, durable=True)
    assert code == 406 and "inequivalent arg 'x-queue-type'" in text, text


def test_confirmed_publish_and_delivery_count_on_redelivery(names, connect):
    q = names.queue("qq")
    ch = connect().channel()
    ch.confirm_delivery()
    ch.queue_declare(q, durable=True, arguments=QUORUM)
    ch.basic_publish("", q, b"task", pika.BasicProperties(delivery_mode=2))
    method, _, body = get(ch, q)
    assert body == b"task" and not method.redelivered
    ch.basic_nack(method.delivery_tag, requeue=True)
    method, props, body = get(ch, q)
    assert body == b"task" and method.redelivered
    assert delivery_count(props) == 1
    ch.basic_ack(method.delivery_tag)
    assert ch.queue_declare(q, passive=True).method.message_count == 0


def test_returned_messages_wait_ahead_in_return_order_under_a_delivery_limit(names, connect):
    q = names.queue("qq")
    ch = connect().channel()
    ch.confirm_delivery()
    ch.queue_declare(q, durable=True, arguments={**QUORUM, "x-delivery-limit": 5})
    for i in range(6):
        ch.basic_publish("", q, f"m{i}".encode(), pika.BasicProperties(delivery_mode=2))
    got = [get(ch, q) for _ in range(4)]
    ch.basic_nack(got[2][0].delivery_tag, requeue=True)
    ch.basic_reject(got[0][0].delivery_tag, requeue=True)
    order = []
    for _ in range(4):
        method, props, body = get(ch, q)
        order.append((body.decode(), delivery_count(props) or 0))
        ch.basic_ack(method.delivery_tag)
    assert order == [("m2", 1), ("m0", 1), ("m4", 0), ("m5", 0)]


def test_delivery_limit_dead_letters_with_reason_delivery_limit(names, connect):
    q, dlq = names.queue("qq"), names.queue("dlq")
    ch = connect().channel()
    ch.queue_declare(dlq)
    ch.queue_declare(q, durable=True, arguments={
        **QUORUM, "x-delivery-limit": 1,
        "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"poison", pika.BasicProperties(delivery_mode=2))
    for _ in range(2):
        method, _, _ = get(ch, q)
        ch.basic_reject(method.delivery_tag, requeue=True)
    method, props, body = get(ch, dlq)
    assert body == b"poison"
    death = props.headers["x-death"][0]
    assert death["reason"] == "delivery_limit" and death["queue"] == q
    ch.basic_ack(method.delivery_tag)
    assert ch.queue_declare(q, passive=True).method.message_count == 0


def test_max_length_reject_publish_nacks_the_publisher(names, connect):
    q = names.queue("qq")
    ch = connect().channel()
    ch.confirm_delivery()
    ch.queue_declare(q, durable=True, arguments={
        **QUORUM, "x-max-length": 1, "x-overflow": "reject-publish"})
    ch.basic_publish("", q, b"first", pika.BasicProperties(delivery_mode=2))
    # WarrenMQ nacks the first publish over the limit; RabbitMQ 3.10.8's quorum queue
    # takes one more before it starts refusing (its limit is checked after the enqueue).
    accepted = 1
    with pytest.raises(pika.exceptions.NackError):
        for _ in range(3):
            ch.basic_publish("", q, b"more", pika.BasicProperties(delivery_mode=2))
            accepted += 1
    assert accepted <= 2
    assert ch.queue_declare(q, passive=True).method.message_count == accepted


def test_at_least_once_dead_lettering_waits_for_a_missing_target(names, connect, broker):
    if broker.process is None:
        # RabbitMQ 3.10.8 keeps the messages too, but retries an unroutable at-least-once
        # message every 180 s (measured): not within this test's bound.
        pytest.skip("the retry interval is WarrenMQ's (1 s)")
    q, dlx, dlq = names.queue("qq"), names.exchange("dlx"), names.queue("dlq")
    ch = connect().channel()
    ch.confirm_delivery()
    ch.queue_declare(q, durable=True, arguments={
        **QUORUM, "x-overflow": "reject-publish", "x-dead-letter-exchange": dlx,
        "x-dead-letter-routing-key": "dead", "x-dead-letter-strategy": "at-least-once"})
    for i in range(3):
        ch.basic_publish("", q, f"job-{i}".encode(), pika.BasicProperties(delivery_mode=2))
    for _ in range(3):
        method, _, _ = get(ch, q)
        ch.basic_reject(method.delivery_tag, requeue=False)
    # No exchange yet: at-most-once would have dropped them; at-least-once keeps them
    # (not ready in the source) until a target takes them.
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    ch.exchange_declare(dlx, "direct", durable=True)
    ch.queue_declare(dlq, durable=True)
    ch.queue_bind(dlq, dlx, "dead")
    seen = set()
    for _ in range(3):
        method, props, body = get(ch, dlq)
        assert props.headers["x-first-death-reason"] == "rejected"
        seen.add(body)
        ch.basic_ack(method.delivery_tag)
    assert seen == {b"job-0", b"job-1", b"job-2"}
