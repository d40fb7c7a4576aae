"""The worker-pool (competing consumers) pattern, as pika applications use it.

A producer publishes persistent JSON tasks to a durable queue; workers with
prefetch_count=1 share them and ack each one. Every worker runs in its own thread with
its own connection (pika connections are not thread-safe). Nothing here sleeps to
synchronise: threads wait on events and conditions, always with a timeout.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from typing import Callable, List, Optional

import pika
import pika.exceptions
import pytest

WAIT = 10.0  # upper bound for any single wait in these tests, in seconds

TASK_PROPS = dict(delivery_mode=2, content_type="application/json")


def publish_tasks(channel, queue: str, ids) -> None:
    for i in ids:
        channel.basic_publish(
            exchange="",
            routing_key=queue,
            body=json.dumps({"task": i, "payload": "x" * (i % 7)}).encode(),
            properties=pika.BasicProperties(**TASK_PROPS),
        )


def producer_channel(conn: pika.BlockingConnection):
    """A channel in confirm mode: basic_publish returns once the broker has the message
    (for a persistent task in a durable queue: once it is on disk). Queue depths read
    after that are exact; without confirms a publish can still be in flight inside the
    broker when a later queue.declare on the same channel is answered."""
    ch = conn.channel()
    ch.confirm_delivery()
    return ch


def check_task(properties, body) -> int:
    assert properties.delivery_mode == 2
    assert properties.content_type == "application/json"
    return json.loads(body)["task"]


class Delivery:
    def __init__(self, worker: "BlockingWorker", channel, method, properties, body):
        self.worker = worker
        self.channel = channel
        self.method = method
        self.properties = properties
        self.body = body


class BlockingWorker(threading.Thread):
    """A BlockingConnection consumer in its own thread.

    ``handler(delivery)`` runs in the worker's thread for each message; it acks or
    nacks through ``delivery.channel`` itself. ``worker.call(fn)`` asks the worker thread
    to run ``fn(connection, channel)`` (pika objects must only be used by their thread).
    """

    def __init__(self, name: str, params: pika.ConnectionParameters, queue: str,
                 handler: Callable[[Delivery], None], prefetch: int = 1):
        super().__init__(name=name, daemon=True)
        self.params = params
        self.queue = queue
        self.handler = handler
        self.prefetch = prefetch
        self.ready = threading.Event()
        self.finished = threading.Event()
        self.stop_requested = threading.Event()
        self.error: Optional[BaseException] = None
        self.consumer_tag: Optional[str] = None
        self._calls: List[Callable] = []
        self._calls_lock = threading.Lock()

    def call(self, fn: Callable) -> None:
        with self._calls_lock:
            self._calls.append(fn)

    def stop(self) -> None:
        self.stop_requested.set()

    def run(self) -> None:
        conn = None
        try:
            conn = pika.BlockingConnection(self.params)
            ch = conn.channel()
            ch.basic_qos(prefetch_count=self.prefetch)

            def on_message(channel, method, properties, body):
                self.handler(Delivery(self, channel, method, properties, body))

            self.consumer_tag = ch.basic_consume(self.queue, on_message)
            self.ready.set()
            while not self.stop_requested.is_set() and conn.is_open:
                conn.process_data_events(time_limit=0.05)
                with self._calls_lock:
                    calls, self._calls = self._calls, []
                for fn in calls:
                    fn(conn, ch)
        except BaseException as e:  # reported to the test by join_ok()
            self.error = e
        finally:
            self.ready.set()
            try:
                if conn is not None and conn.is_open:
                    conn.close()
            except Exception:
                pass
            self.finished.set()

    def join_ok(self) -> None:
        self.stop()
        self.join(WAIT)
        assert not self.is_alive(), f"worker {self.name} did not stop"
        if self.error is not None:
            raise AssertionError(f"worker {self.name} failed: {self.error!r}") from self.error


def start_workers(*workers: BlockingWorker) -> None:
    """Start workers one after the other, each consuming before the next starts."""
    for w in workers:
        w.start()
        assert w.ready.wait(WAIT), f"worker {w.name} did not start consuming"
        if w.error is not None:
            raise AssertionError(f"worker {w.name} failed to start: {w.error!r}") from w.error


def queue_depth(channel, queue: str) -> int:
    return channel.queue_declare(queue, passive=True).method.message_count


# ---------------------------------------------------------------------------
# BlockingConnection workers
# ---------------------------------------------------------------------------

def test_blocking_workers_share_tasks_exactly_once(params, names, connect):
    queue = names.queue("tasks")
    n_tasks = 40

    conn = connect()
    ch = producer_channel(conn)
    ch.queue_declare(queue, durable=True)

    cond = threading.Condition()
    processed = Counter()  # task id -> times processed
    by_worker = {"w1": [], "w2": []}
    redelivered = []
    # Each worker holds its first task (unacked) until the test says go. With
    # prefetch_count=1 a worker holding an unacked message cannot be sent another, so
    # the second task must go to the other worker and the rest must stay in the queue.
    holding = {"w1": threading.Event(), "w2": threading.Event()}
    go = threading.Event()

    def handler(d: Delivery):
        task = check_task(d.properties, d.body)
        name = d.worker.name
        if not by_worker[name] and not go.is_set():
            holding[name].set()
            assert go.wait(WAIT), "test never released the first tasks"
        with cond:
            processed[task] += 1
            by_worker[name].append(task)
            if d.method.redelivered:
                redelivered.append(task)
            cond.notify_all()
        d.channel.basic_ack(d.method.delivery_tag)

    w1 = BlockingWorker("w1", params, queue, handler)
    w2 = BlockingWorker("w2", params, queue, handler)
    start_workers(w1, w2)
    try:
        publish_tasks(ch, queue, range(n_tasks))
        for name, ev in holding.items():
            assert ev.wait(WAIT), f"worker {name} got no task while the other held one"
        assert queue_depth(ch, queue) == n_tasks - 2, "prefetch_count=1 not honoured"
        go.set()
        with cond:
            done = cond.wait_for(lambda: sum(processed.values()) >= n_tasks, timeout=WAIT)
        assert done, f"only {sum(processed.values())} of {n_tasks} tasks processed in {WAIT}s"
    finally:
        go.set()
        w1.join_ok()
        w2.join_ok()

    assert set(processed) == set(range(n_tasks))
    assert all(c == 1 for c in processed.values()), f"processed twice: {processed}"
    assert by_worker["w1"] and by_worker["w2"], f"one worker got nothing: {by_worker}"
    assert not redelivered, f"unexpected redeliveries: {redelivered}"
    # Each worker sees its tasks in publish order (one queue, FIFO).
    for tasks in by_worker.values():
        assert tasks == sorted(tasks)
    assert queue_depth(ch, queue) == 0


@pytest.mark.parametrize("failure", ["nack-requeue", "reject-requeue", "close-connection"])
def test_blocking_failed_task_is_redelivered_to_other_worker(params, names, connect, failure):
    queue = names.queue("tasks")
    conn = connect()
    ch = producer_channel(conn)
    ch.queue_declare(queue, durable=True)

    bad_got = threading.Event()
    good_got = threading.Event()
    seen = {}

    def bad_handler(d: Delivery):
        seen["bad"] = (check_task(d.properties, d.body), d.method.redelivered)
        seen["bad_tag"] = d.method.delivery_tag
        bad_got.set()  # the test then starts the good worker and tells us to fail

    def good_handler(d: Delivery):
        seen["good"] = (check_task(d.properties, d.body), d.method.redelivered)
        d.channel.basic_ack(d.method.delivery_tag)
        good_got.set()

    bad = BlockingWorker("bad", params, queue, bad_handler)
    good = BlockingWorker("good", params, queue, good_handler)
    start_workers(bad)
    try:
        publish_tasks(ch, queue, [7])
        assert bad_got.wait(WAIT), "first worker never got the task"
        start_workers(good)
        assert not good_got.is_set(), "task was delivered twice while unacked"

        if failure == "close-connection":
            # Closing the connection with the task unacked gives it back to the queue.
            bad.stop()
        else:
            def give_up(conn_, ch_):
                # Cancel first so that the requeued task can only go to the other worker.
                ch_.basic_cancel(bad.consumer_tag)
                if failure == "nack-requeue":
                    ch_.basic_nack(delivery_tag=seen["bad_tag"], requeue=True)
                else:
                    ch_.basic_reject(delivery_tag=seen["bad_tag"], requeue=True)

            bad.call(give_up)

        assert good_got.wait(WAIT), "task was not redelivered to the other worker"
    finally:
        bad.join_ok()
        good.join_ok()

    assert seen["bad"] == (7, False)
    assert seen["good"] == (7, True), "redelivered task must carry redelivered=True"
    assert queue_depth(ch, queue) == 0


def test_blocking_unacked_tasks_requeued_when_worker_channel_closes(params, names, connect):
    """With prefetch 3, a worker that dies holding 3 tasks gives all 3 back."""
    queue = names.queue("tasks")
    conn = connect()
    ch = producer_channel(conn)
    ch.queue_declare(queue, durable=True)

    cond = threading.Condition()
    held = []

    def hoarder(d: Delivery):
        with cond:
            held.append(check_task(d.properties, d.body))
            cond.notify_all()

    w = BlockingWorker("hoarder", params, queue, hoarder, prefetch=3)
    start_workers(w)
    try:
        publish_tasks(ch, queue, range(5))
        with cond:
            assert cond.wait_for(lambda: len(held) >= 3, timeout=WAIT)
        # The two tasks beyond the prefetch window stay ready in the queue.
        assert queue_depth(ch, queue) == 2
        with cond:
            assert len(held) == 3, f"prefetch_count=3 exceeded: {held}"
    finally:
        w.join_ok()

    # Requeueing on close happens asynchronously in the broker: consume (bounded)
    # rather than basic_get, which could run before the requeue.
    got = []
    for method, props, body in ch.consume(queue, auto_ack=True, inactivity_timeout=WAIT):
        assert method is not None, f"only {got} came back within {WAIT}s"
        got.append((check_task(props, body), method.redelivered))
        if len(got) == 5:
            break
    ch.cancel()
    assert sorted(t for t, _ in got) == list(range(5))
    assert {t for t, r in got if r} == {0, 1, 2}
    assert ch.basic_get(queue, auto_ack=True) == (None, None, None)


# ---------------------------------------------------------------------------
# SelectConnection (asynchronous) workers
# ---------------------------------------------------------------------------

class AsyncWorker(threading.Thread):
    """A SelectConnection consumer with its own ioloop in its own thread.

    The ioloop is bounded by ``call_later(timeout)``. Other threads talk to it only
    through ``ioloop.add_callback_threadsafe``.
    """

    def __init__(self, name: str, params: pika.ConnectionParameters, queue: str,
                 on_task: Callable[["AsyncWorker", object, object, bytes], bool],
                 timeout: float = WAIT + 5):
        super().__init__(name=name, daemon=True)
        self.params = params
        self.queue = queue
        self.on_task = on_task  # returns True to ack now, False to hold the message
        self.timeout = timeout
        self.ready = threading.Event()
        self.finished = threading.Event()
        self.error: Optional[str] = None
        self.timed_out = False
        self.held: List[int] = []  # delivery tags held back by on_task
        self.connection: Optional[pika.SelectConnection] = None
        self.channel = None
        self._closing = False

    # -- ioloop thread --------------------------------------------------------------
    def run(self) -> None:
        try:
            self.connection = pika.SelectConnection(
                self.params,
                on_open_callback=self._on_open,
                on_open_error_callback=self._on_open_error,
                on_close_callback=self._on_closed,
            )
            self.connection.ioloop.call_later(self.timeout, self._on_timeout)
            self.connection.ioloop.start()
        except BaseException as e:
            self.error = f"ioloop failed: {e!r}"
        finally:
            self.ready.set()
            self.finished.set()

    def _on_open(self, connection):
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_open_error(self, connection, err):
        self.error = f"connection failed: {err!r}"
        connection.ioloop.stop()

    def _on_closed(self, connection, reason):
        if not self._closing and self.error is None:
            self.error = f"connection closed unexpectedly: {reason!r}"
        connection.ioloop.stop()

    def _on_channel_open(self, channel):
        self.channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.basic_qos(prefetch_count=1, callback=self._on_qos_ok)

    def _on_channel_closed(self, channel, reason):
        if not self._closing:
            self.error = f"channel closed unexpectedly: {reason!r}"
            self._close()

    def _on_qos_ok(self, _frame):
        self.channel.basic_consume(self.queue, self._on_message, callback=self._on_consume_ok)

    def _on_consume_ok(self, _frame):
        self.ready.set()

    def _on_message(self, channel, method, properties, body):
        if self.on_task(self, method, properties, body):
            channel.basic_ack(method.delivery_tag)
        else:
            self.held.append(method.delivery_tag)

    def _release_held(self):
        for tag in self.held:
            self.channel.basic_ack(tag)
        self.held = []

    def _on_timeout(self):
        self.timed_out = True
        self._close()

    def _close(self):
        if self._closing:
            return
        self._closing = True
        if self.connection.is_open:
            self.connection.close()
        else:
            self.connection.ioloop.stop()

    # -- other threads --------------------------------------------------------------
    def release_held(self) -> None:
        self.connection.ioloop.add_callback_threadsafe(self._release_held)

    def shutdown(self) -> None:
        if self.connection is not None and not self.finished.is_set():
            try:
                self.connection.ioloop.add_callback_threadsafe(self._close)
            except Exception:
                pass
        self.join(WAIT)
        assert not self.is_alive(), f"async worker {self.name} did not stop"
        assert not self.timed_out, f"async worker {self.name} hit its ioloop timeout"
        assert self.error is None, f"async worker {self.name}: {self.error}"


def test_select_connection_workers_share_tasks_exactly_once(params, names, connect):
    queue = names.queue("tasks")
    n_tasks = 40

    conn = connect()
    ch = producer_channel(conn)
    ch.queue_declare(queue, durable=True)

    cond = threading.Condition()
    processed = Counter()
    by_worker = {"a1": [], "a2": []}
    redelivered = []

    def on_task(worker: AsyncWorker, method, properties, body) -> bool:
        task = check_task(properties, body)
        with cond:
            first = not by_worker[worker.name]
            processed[task] += 1
            by_worker[worker.name].append(task)
            if method.redelivered:
                redelivered.append(task)
            cond.notify_all()
        # Hold the first task (unacked) until both workers have one: with prefetch 1 the
        # broker must give the second task to the other worker.
        return not first

    a1 = AsyncWorker("a1", params, queue, on_task)
    a2 = AsyncWorker("a2", params, queue, on_task)
    try:
        for w in (a1, a2):
            w.start()
            assert w.ready.wait(WAIT), f"async worker {w.name} did not start consuming"
            assert w.error is None, w.error

        publish_tasks(ch, queue, range(n_tasks))
        with cond:
            both = cond.wait_for(lambda: by_worker["a1"] and by_worker["a2"], timeout=WAIT)
            assert both, f"prefetch=1 not honoured, one worker got nothing: {by_worker}"
            assert sum(processed.values()) == 2, "a worker got a 2nd task while holding one"
        assert queue_depth(ch, queue) == n_tasks - 2, "prefetch_count=1 not honoured"
        a1.release_held()
        a2.release_held()
        with cond:
            done = cond.wait_for(lambda: sum(processed.values()) >= n_tasks, timeout=WAIT)
        assert done, f"only {sum(processed.values())} of {n_tasks} tasks processed in {WAIT}s"
    finally:
        a1.shutdown()
        a2.shutdown()

    assert set(processed) == set(range(n_tasks))
    assert all(c == 1 for c in processed.values()), f"processed twice: {processed}"
    assert not redelivered, f"unexpected redeliveries: {redelivered}"
    assert queue_depth(ch, queue) == 0


def test_select_connection_failed_task_is_redelivered(params, names, connect):
    """An async worker that nacks (requeue) hands the task to the other async worker."""
    queue = names.queue("tasks")
    conn = connect()
    ch = producer_channel(conn)
    ch.queue_declare(queue, durable=True)

    bad_got = threading.Event()
    got = threading.Event()
    seen = {}

    def failing(worker, method, properties, body) -> bool:
        seen.setdefault("bad", (check_task(properties, body), method.redelivered))
        bad_got.set()
        # Stop consuming, then give the task back: only the other worker can take it.
        def cancelled(_frame):
            worker.channel.basic_nack(method.delivery_tag, requeue=True)
        worker.channel.basic_cancel(worker.channel.consumer_tags[0], callback=cancelled)
        return False

    def working(worker, method, properties, body) -> bool:
        seen["good"] = (check_task(properties, body), method.redelivered)
        got.set()
        return True

    bad = AsyncWorker("bad", params, queue, failing)
    good = AsyncWorker("good", params, queue, working)
    try:
        bad.start()
        assert bad.ready.wait(WAIT) and bad.error is None, bad.error
        publish_tasks(ch, queue, [3])
        # Start the second worker only once the first has taken the task.
        assert bad_got.wait(WAIT), "first async worker never got the task"
        good.start()
        assert good.ready.wait(WAIT) and good.error is None, good.error
        assert got.wait(WAIT), "task was not redelivered to the other async worker"
    finally:
        bad.shutdown()
        good.shutdown()

    assert seen["bad"] == (3, False)
    assert seen["good"] == (3, True)
    assert queue_depth(ch, queue) == 0


# ---------------------------------------------------------------------------
# basic.get and publisher confirms (BlockingConnection)
# ---------------------------------------------------------------------------

def test_basic_get_pulls_tasks_in_order(names, connect):
    queue = names.queue("tasks")
    ch = producer_channel(connect())
    ch.queue_declare(queue, durable=True)
    assert ch.basic_get(queue) == (None, None, None)

    publish_tasks(ch, queue, range(3))

    def get(expect_task, expect_left, expect_redelivered, **kw):
        method, props, body = ch.basic_get(queue, **kw)
        assert method is not None, f"get-empty, expected task {expect_task}"
        assert check_task(props, body) == expect_task
        assert method.message_count == expect_left  # messages left in the queue
        assert method.redelivered is expect_redelivered
        assert method.exchange == ""
        assert method.routing_key == queue
        return method.delivery_tag

    ch.basic_ack(get(0, 2, False))
    # A nacked (requeue) task goes back to its place at the head, flagged redelivered.
    ch.basic_nack(get(1, 1, False), requeue=True)
    ch.basic_ack(get(1, 1, True))
    get(2, 0, False, auto_ack=True)
    assert ch.basic_get(queue) == (None, None, None)
    assert queue_depth(ch, queue) == 0


def test_publisher_confirms(names, connect):
    queue = names.queue("tasks")
    ch = connect().channel()
    ch.confirm_delivery()
    ch.queue_declare(queue, durable=True)

    # Confirmed persistent publishes to a durable queue: basic_publish returns normally.
    publish_tasks(ch, queue, range(10))
    assert queue_depth(ch, queue) == 10

    # Mandatory and unroutable: basic.return then ack -> UnroutableError.
    missing = names.queue("no-such-queue")
    with pytest.raises(pika.exceptions.UnroutableError) as exc:
        ch.basic_publish("", missing, b"{}", pika.BasicProperties(**TASK_PROPS),
                         mandatory=True)
    returned = exc.value.messages
    assert len(returned) == 1
    assert returned[0].method.reply_code == 312  # NO_ROUTE
    assert returned[0].method.routing_key == missing
    assert returned[0].body == b"{}"

    # Same through a named exchange without a matching binding.
    with pytest.raises(pika.exceptions.UnroutableError):
        ch.basic_publish("amq.direct", missing, b"{}", mandatory=True)

    # Unroutable without mandatory is simply confirmed (and dropped).
    ch.basic_publish("", missing, b"{}")

    # The channel is still fine: more confirmed publishes land in the queue.
    publish_tasks(ch, queue, range(10, 15))
    assert queue_depth(ch, queue) == 15
    method, props, body = ch.basic_get(queue, auto_ack=True)
    assert check_task(props, body) == 0
