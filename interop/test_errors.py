"""Reply codes for the usual client mistakes, as pika reports them.

A soft error closes only the channel (pika raises ChannelClosedByBroker with the reply
code); the connection stays open and usable.
"""

from __future__ import annotations

import pika
import pika.exceptions
import pytest

NOT_FOUND = 404
RESOURCE_LOCKED = 405
PRECONDITION_FAILED = 406
ACCESS_REFUSED = 403


def assert_usable(conn: pika.BlockingConnection, queue: str) -> None:
    """The connection still works after a channel error: new channel, full round trip."""
    assert conn.is_open
    ch = conn.channel()
    ch.confirm_delivery()  # publish returns once the queue has the message
    ch.queue_declare(queue, auto_delete=False)
    ch.basic_publish("", queue, b"still alive")
    method, _props, body = ch.basic_get(queue, auto_ack=True)
    assert method is not None and body == b"still alive"
    ch.close()


def closed_with(excinfo, code: int) -> None:
    err = excinfo.value
    assert err.reply_code == code, f"expected {code}, got {err.reply_code} {err.reply_text!r}"


# --- 404 NOT_FOUND -----------------------------------------------------------------

def test_passive_declare_of_missing_queue_is_404(names, connect):
    conn = connect()
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as exc:
        ch.queue_declare(names.queue("missing"), passive=True)
    closed_with(exc, NOT_FOUND)
    assert ch.is_closed
    assert_usable(conn, names.queue())


def test_passive_declare_of_missing_exchange_is_404(names, connect):
    conn = connect()
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as exc:
        ch.exchange_declare(names.exchange("missing"), passive=True)
    closed_with(exc, NOT_FOUND)
    assert_usable(conn, names.queue())


def test_consume_from_missing_queue_is_404(names, connect):
    conn = connect()
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as exc:
        ch.basic_consume(names.queue("missing"), lambda *a: None)
    closed_with(exc, NOT_FOUND)
    assert_usable(conn, names.queue())


def test_confirmed_publish_to_missing_exchange_is_404(names, connect):
    conn = connect()
    ch = conn.channel()
    ch.confirm_delivery()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as exc:
        ch.basic_publish(names.exchange("missing"), "rk", b"lost")
    closed_with(exc, NOT_FOUND)
    assert_usable(conn, names.queue())


# --- 406 PRECONDITION_FAILED: non-equivalent redeclare --------------------------------

def test_redeclare_queue_with_other_durable_flag_is_406(names, connect):
    conn = connect()
    queue = names.queue("durable")
    ch = conn.channel()
    ch.queue_declare(queue, durable=True)
    ch.queue_declare(queue, durable=True)  # the same declaration again is fine
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as exc:
        ch.queue_declare(queue, durable=False)
    closed_with(exc, PRECONDITION_FAILED)
    # The queue is unchanged; a passive declare still finds it.
    ch2 = conn.channel()
    assert ch2.queue_declare(queue, passive=True).method.queue == queue
    assert_usable(conn, names.queue())


def test_redeclare_exchange_with_other_type_is_406(names, connect):
    conn = connect()
    exchange = names.exchange("direct")
    ch = conn.channel()
    ch.exchange_declare(exchange, exchange_type="direct")
    ch.exchange_declare(exchange, exchange_type="direct")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as exc:
        ch.exchange_declare(exchange, exchange_type="fanout")
    closed_with(exc, PRECONDITION_FAILED)
    assert_usable(conn, names.queue())


# --- 405 RESOURCE_LOCKED: exclusive queues ---------------------------------------------

def test_exclusive_queue_is_locked_for_other_connections(names, connect):
    owner = connect()
    other = connect()
    queue = names.queue("exclusive")
    owner_ch = owner.channel()
    owner_ch.queue_declare(queue, exclusive=True)

    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as exc:
        other.channel().queue_declare(queue)
    closed_with(exc, RESOURCE_LOCKED)

    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as exc:
        other.channel().queue_declare(queue, passive=True)
    closed_with(exc, RESOURCE_LOCKED)

    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as exc:
        other.channel().basic_consume(queue, lambda *a: None)
    closed_with(exc, RESOURCE_LOCKED)

    # The owner is unaffected and can use its queue.
    owner_ch.confirm_delivery()
    owner_ch.basic_publish("", queue, b"mine")
    method, _props, body = owner_ch.basic_get(queue, auto_ack=True)
    assert body == b"mine"
    assert_usable(other, names.queue())


# --- 403 ACCESS_REFUSED: reserved names -------------------------------------------------

def test_declaring_amq_prefixed_exchange_is_403(names, connect):
    conn = connect()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as exc:
        conn.channel().exchange_declare("amq.foo", exchange_type="direct")
    closed_with(exc, ACCESS_REFUSED)
    assert_usable(conn, names.queue())


def test_declaring_amq_prefixed_queue_is_403(names, connect):
    conn = connect()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as exc:
        conn.channel().queue_declare("amq.foo")
    closed_with(exc, ACCESS_REFUSED)
    assert_usable(conn, names.queue())


# --- 406 PRECONDITION_FAILED: bad acknowledgements -----------------------------------------

def test_ack_of_unknown_delivery_tag_is_406(names, connect):
    conn = connect()
    ch = conn.channel()
    ch.basic_ack(delivery_tag=999)  # asynchronous: the error shows on the next round trip
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as exc:
        ch.basic_qos(prefetch_count=1)
    closed_with(exc, PRECONDITION_FAILED)
    assert_usable(conn, names.queue())


def test_double_ack_is_406(names, connect):
    conn = connect()
    queue = names.queue()
    ch = conn.channel()
    ch.queue_declare(queue)
    ch.confirm_delivery()
    ch.basic_publish("", queue, b"once")
    method, _props, _body = ch.basic_get(queue)
    assert method is not None
    ch.basic_ack(method.delivery_tag)
    ch.basic_ack(method.delivery_tag)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as exc:
        ch.basic_qos(prefetch_count=1)
    closed_with(exc, PRECONDITION_FAILED)
    # The first ack counted: the message is gone, not requeued by the channel close.
    ch2 = conn.channel()
    assert ch2.queue_declare(queue, passive=True).method.message_count == 0
    assert_usable(conn, names.queue())


def test_connection_survives_several_channel_errors(names, connect):
    conn = connect()
    for _ in range(3):
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as exc:
            conn.channel().queue_declare(names.queue("missing"), passive=True)
        closed_with(exc, NOT_FOUND)
    assert_usable(conn, names.queue())


# --- authentication ------------------------------------------------------------------------

def test_wrong_password_is_refused(broker):
    params = broker.params(password="definitely-not-the-password")
    with pytest.raises((pika.exceptions.ProbableAuthenticationError,
                        pika.exceptions.AuthenticationError)):
        conn = pika.BlockingConnection(params)
        conn.close()  # only reached if the broker wrongly let us in


def test_unknown_user_is_refused(broker):
    params = broker.params(username="no-such-user", password="guest")
    with pytest.raises((pika.exceptions.ProbableAuthenticationError,
                        pika.exceptions.AuthenticationError)):
        conn = pika.BlockingConnection(params)
        conn.close()
