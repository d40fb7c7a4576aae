"""Topic routing of inference tasks to per-model worker pools, as a pika application does it.

A producer publishes tasks through one topic exchange with routing keys naming the task
(``inference.summarize.<device>``, ``embed.<kind>...``). A summarize pool consumes a queue
bound with ``inference.summarize.*``, an embed pool a queue bound with ``embed.#``; each
pool has two BlockingConnection workers (prefetch 1, manual acks) in their own threads.
Each pool must get exactly its own tasks, each once; tasks for no pool are returned to the
mandatory publisher. Waits are bounded conditions, never sleeps.
"""

from __future__ import annotations

import json
import threading
from typing import Dict, List, Optional, Tuple

import pika
import pika.exceptions
import pytest

WAIT = 10.0

SUMMARIZE = ["inference.summarize.gpu", "inference.summarize.cpu", "inference.summarize."]
EMBED = ["embed", "embed.text", "embed.image.v2", "embed..x"]
NOBODY = ["inference.summarize", "inference.summarize.gpu.batch", "inference.translate.gpu",
          "embeddings.text", "summarize.gpu", ""]


class Worker(threading.Thread):
    """Consumes one queue, acks every task, records (task id, routing key)."""

    def __init__(self, name: str, params: pika.ConnectionParameters, queue: str,
                 record, stop: threading.Event):
        super().__init__(name=name, daemon=True)
        self.params, self.queue, self.record, self.stop = params, queue, record, stop
        self.ready = threading.Event()
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        conn = None
        try:
            conn = pika.BlockingConnection(self.params)
            ch = conn.channel()
            ch.basic_qos(prefetch_count=1)

            def on_message(channel, method, properties, body):
                task = json.loads(body)
                self.record(self.name, task["id"], method.routing_key, properties)
                channel.basic_ack(method.delivery_tag)

            ch.basic_consume(self.queue, on_message)
            self.ready.set()
            while not self.stop.is_set():
                conn.process_data_events(time_limit=0.05)
        except BaseException as e:  # reported by the test
            self.error = e
        finally:
            self.ready.set()
            try:
                if conn is not None and conn.is_open:
                    conn.close()
            except Exception:
                pass


def test_topic_routes_each_model_type_to_its_own_pool(params, names, connect):
    exchange = names.exchange("tasks")
    q_sum = names.queue("summarize")
    q_embed = names.queue("embed")
    ch = connect().channel()
    ch.confirm_delivery()
    ch.exchange_declare(exchange, "topic", durable=True)
    for q, pattern in ((q_sum, "inference.summarize.*"), (q_embed, "embed.#")):
        ch.queue_declare(q, durable=True)
        ch.queue_bind(q, exchange, pattern)

    cond = threading.Condition()
    got: Dict[str, List[Tuple[int, str]]] = {"summarize": [], "embed": []}

    def record(worker: str, task: int, key: str, properties) -> None:
        assert properties.content_type == "application/json"
        with cond:
            got[worker.split("-")[0]].append((task, key))
            cond.notify_all()

    stop = threading.Event()
    workers = [Worker(f"{pool}-{i}", params, q, record, stop)
               for pool, q in (("summarize", q_sum), ("embed", q_embed)) for i in range(2)]
    for w in workers:
        w.start()
    try:
        for w in workers:
            assert w.ready.wait(WAIT) and w.error is None, f"{w.name}: {w.error!r}"

        expected: Dict[str, List[Tuple[int, str]]] = {"summarize": [], "embed": []}
        returned = []
        for i in range(60):
            pool, keys = [("summarize", SUMMARIZE), ("embed", EMBED), (None, NOBODY)][i % 3]
            key = keys[(i // 3) % len(keys)]
            body = json.dumps({"id": i, "model": pool}).encode()
            props = pika.BasicProperties(content_type="application/json", delivery_mode=2)
            try:
                ch.basic_publish(exchange, key, body, props, mandatory=True)
            except pika.exceptions.UnroutableError:
                returned.append(key)
                continue
            assert pool is not None, f"task for nobody was routed: {key!r}"
            expected[pool].append((i, key))

        assert sorted(returned) == sorted(NOBODY[(j // 3) % len(NOBODY)]
                                          for j in range(60) if j % 3 == 2)
        total = sum(len(v) for v in expected.values())
        with cond:
            done = cond.wait_for(lambda: sum(len(v) for v in got.values()) >= total,
                                 timeout=WAIT)
        assert done, f"only {got} of {expected} arrived in {WAIT}s"
    finally:
        stop.set()
        for w in workers:
            w.join(WAIT)
            assert not w.is_alive(), f"worker {w.name} did not stop"
        for w in workers:
            assert w.error is None, f"{w.name}: {w.error!r}"

    for pool in ("summarize", "embed"):
        assert sorted(got[pool]) == sorted(expected[pool]), f"pool {pool}"
    # Nothing left behind in either queue.
    for q in (q_sum, q_embed):
        assert ch.queue_declare(q, passive=True).method.message_count == 0


@pytest.mark.parametrize("x_match,headers,routed", [
    ("all", {"model": "llama", "gpus": 1}, True),
    ("all", {"model": "llama", "gpus": "1"}, False),
    ("any", {"model": "mistral", "gpus": 1}, True),
    ("any", {"model": "mistral"}, False),
])
def test_headers_exchange_routes_by_model_header(names, connect, x_match, headers, routed):
    exchange = names.exchange("models")
    q = names.queue("llama")
    ch = connect().channel()
    ch.confirm_delivery()
    ch.exchange_declare(exchange, "headers")
    ch.queue_declare(q)
    ch.queue_bind(q, exchange, arguments={"x-match": x_match, "model": "llama", "gpus": 1})
    props = pika.BasicProperties(headers=headers)
    try:
        ch.basic_publish(exchange, "", b"task", props, mandatory=True)
        was_routed = True
    except pika.exceptions.UnroutableError:
        was_routed = False
    assert was_routed is routed
    assert ch.queue_declare(q, passive=True).method.message_count == int(routed)
