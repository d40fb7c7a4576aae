"""An inference-style worker pool on WarrenMQ (or RabbitMQ), with pika.

Topology (every name carries a prefix so several pools can share a broker):

* ``<p>.tasks``  topic exchange; the dispatcher publishes ``task.<kind>.<urgency>``.
* ``<p>.pool.small`` / ``<p>.pool.large``  durable priority queues (x-max-priority 10),
  bound to ``task.<kind>.*`` on the tasks exchange and on the retry exchange; their
  dead letters go to ``<p>.dlx``.
* ``<p>.retry``  an ``x-delayed-message`` exchange (x-delayed-type topic): a failed task is
  republished here with ``x-delay`` growing per attempt and comes back to its pool later.
* ``<p>.dlx`` fanout -> ``<p>.dead``: tasks that expired (per-message TTL) or failed
  ``MAX_ATTEMPTS`` times; the dead-letter monitor reads their ``x-death`` header.
* Results go back by direct reply-to: the dispatcher consumes ``amq.rabbitmq.reply-to``
  and publishes tasks with that ``reply_to``; workers publish each result to the
  rewritten name with the task's correlation id.

Workers run as separate processes (``python pool.py worker ...``) with their own
connection and prefetch; they print ``START``/``DONE``/``RETRY``/``DEAD`` lines so a
supervisor can see what they are doing. Work is real CPU work: counting primes below n
with a sieve. The dispatcher and the monitor are classes used by the demo (``python
pool.py demo``) and by ``interop/test_inference_pool.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import pika

REPLY_TO = "amq.rabbitmq.reply-to"
MAX_ATTEMPTS = 3
RETRY_BASE_MS = 50  # retry n waits RETRY_BASE_MS * 2**n ms in the delayed exchange
URGENT_PRIORITY = 9
NORMAL_PRIORITY = 1


def count_primes(n: int) -> int:
    """Primes below n (sieve of Eratosthenes): the 'model' the workers run."""
    if n < 3:
        return 0
    sieve = bytearray([1]) * n
    sieve[0] = sieve[1] = 0
    for i in range(2, int(n ** 0.5) + 1):
        if sieve[i]:
            sieve[i * i::i] = bytearray(len(range(i * i, n, i)))
    return sum(sieve)


@dataclass
class Topology:
    prefix: str

    @property
    def tasks(self) -> str:
        return f"{self.prefix}.tasks"

    @property
    def retry(self) -> str:
        return f"{self.prefix}.retry"

    @property
    def dlx(self) -> str:
        return f"{self.prefix}.dlx"

    @property
    def dead(self) -> str:
        return f"{self.prefix}.dead"

    def pool(self, kind: str) -> str:
        return f"{self.prefix}.pool.{kind}"

    def declare(self, ch) -> None:
        ch.exchange_declare(self.tasks, "topic", durable=True)
        ch.exchange_declare(self.retry, "x-delayed-message", durable=True,
                            arguments={"x-delayed-type": "topic"})
        ch.exchange_declare(self.dlx, "fanout", durable=True)
        ch.queue_declare(self.dead, durable=True)
        ch.queue_bind(self.dead, self.dlx)
        for kind in ("small", "large"):
            q = self.pool(kind)
            ch.queue_declare(q, durable=True, arguments={
                "x-max-priority": 10,
                "x-dead-letter-exchange": self.dlx,
            })
            ch.queue_bind(q, self.tasks, f"task.{kind}.*")
            ch.queue_bind(q, self.retry, f"task.{kind}.*")

    def delete(self, ch) -> None:
        for kind in ("small", "large"):
            ch.queue_delete(self.pool(kind))
        ch.queue_delete(self.dead)
        for x in (self.tasks, self.retry, self.dlx):
            ch.exchange_delete(x)


def say(*parts) -> None:
    print(*parts, flush=True)


def run_worker(url: str, prefix: str, kind: str, prefetch: int) -> None:
    """Consume one pool until killed: compute, reply, retry with back-off or give up."""
    topo = Topology(prefix)
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=prefetch)
    # Confirms: a retry copy is safely in the delayed exchange before the original is acked.
    ch.confirm_delivery()

    def on_task(ch, method, props, body):
        task = json.loads(body)
        attempt = int((props.headers or {}).get("x-attempt", 0))
        say("START", task["id"], attempt)
        try:
            if task.get("fail_until", 0) > attempt:
                raise RuntimeError(f"transient failure on attempt {attempt}")
            result = count_primes(int(task["n"]))
        except Exception as e:  # the task failed: retry later, or dead-letter it
            if attempt + 1 >= MAX_ATTEMPTS:
                say("DEAD", task["id"], attempt, e)
                ch.basic_nack(method.delivery_tag, requeue=False)
                return
            headers = dict(props.headers or {})
            headers["x-attempt"] = attempt + 1
            headers["x-delay"] = RETRY_BASE_MS * 2 ** attempt
            retry_props = pika.BasicProperties(
                delivery_mode=2, content_type=props.content_type, priority=props.priority,
                reply_to=props.reply_to, correlation_id=props.correlation_id,
                headers=headers)
            ch.basic_publish(topo.retry, method.routing_key, body, retry_props)
            ch.basic_ack(method.delivery_tag)
            say("RETRY", task["id"], attempt, e)
            return
        if props.reply_to:
            reply = {"id": task["id"], "result": result, "pool": kind, "pid": os.getpid(),
                     "attempt": attempt}
            ch.basic_publish("", props.reply_to, json.dumps(reply).encode(),
                             pika.BasicProperties(correlation_id=props.correlation_id,
                                                  content_type="application/json"))
        ch.basic_ack(method.delivery_tag)
        say("DONE", task["id"], attempt)

    ch.basic_consume(topo.pool(kind), on_task)
    say("READY", kind, prefetch)
    ch.start_consuming()


@dataclass
class Answer:
    result: int
    pool: str
    attempt: int
    rank: int  # arrival order among all answers


@dataclass
class Dispatcher:
    """Publishes tasks (mandatory, confirmed) and collects answers by direct reply-to.
    Also watches the dead-letter queue. Single-threaded: ``pump`` drives both."""

    conn: pika.BlockingConnection
    topo: Topology
    answers: Dict[str, Answer] = field(default_factory=dict)
    dead: Dict[str, dict] = field(default_factory=dict)
    duplicates: int = 0

    def __post_init__(self):
        self.ch = self.conn.channel()
        # Reply consumer first: publishing with reply_to=amq.rabbitmq.reply-to needs it.
        self.ch.basic_consume(REPLY_TO, self._on_reply, auto_ack=True)
        self.ch.confirm_delivery()
        self.monitor = self.conn.channel()
        self.monitor.basic_consume(self.topo.dead, self._on_dead, auto_ack=True)

    def submit(self, task_id: str, kind: str, n: int, urgent: bool = False,
               ttl_ms: Optional[int] = None, fail_until: int = 0) -> None:
        body = json.dumps({"id": task_id, "n": n, "fail_until": fail_until}).encode()
        props = pika.BasicProperties(
            reply_to=REPLY_TO, correlation_id=task_id, delivery_mode=2,
            content_type="application/json",
            priority=URGENT_PRIORITY if urgent else NORMAL_PRIORITY,
            expiration=str(ttl_ms) if ttl_ms is not None else None)
        key = f"task.{kind}.{'urgent' if urgent else 'normal'}"
        self.ch.basic_publish(self.topo.tasks, key, body, props, mandatory=True)

    def _on_reply(self, ch, method, props, body):
        reply = json.loads(body)
        if props.correlation_id in self.answers:
            self.duplicates += 1  # a task redelivered after its worker died mid-reply
            return
        self.answers[props.correlation_id] = Answer(
            reply["result"], reply["pool"], reply["attempt"], len(self.answers))

    def _on_dead(self, ch, method, props, body):
        task = json.loads(body)
        deaths = (props.headers or {}).get("x-death") or []
        first = deaths[0] if deaths else {}
        self.dead[task["id"]] = {
            "reason": first.get("reason"),
            "queue": first.get("queue"),
            "count": first.get("count"),
        }

    def pump(self, until, timeout: float) -> bool:
        """Process broker events until ``until()`` holds or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while not until():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.conn.process_data_events(time_limit=min(left, 0.2))
        return True


def demo(url: str) -> None:
    """Run a small pool end to end and print what happened."""
    import subprocess
    topo = Topology(f"demo.{os.getpid()}")
    conn = pika.BlockingConnection(pika.URLParameters(url))
    topo.declare(conn.channel())
    d = Dispatcher(conn, topo)
    ids = []
    for i in range(20):
        kind = "small" if i % 2 else "large"
        ids.append(f"t{i}")
        d.submit(f"t{i}", kind, 20_000 if kind == "small" else 200_000,
                 urgent=i % 5 == 0, fail_until=99 if i == 7 else (1 if i == 3 else 0))
    workers = [subprocess.Popen([sys.executable, __file__, "worker", "--url", url,
                                 "--prefix", topo.prefix, "--pool", kind,
                                 "--prefetch", str(p)])
               for kind, p in (("small", 8), ("large", 1), ("large", 1))]
    try:
        d.pump(lambda: len(d.answers) + len(d.dead) >= len(ids), 60)
        for tid in ids:
            print(tid, d.answers.get(tid) or d.dead.get(tid))
    finally:
        for w in workers:
            w.kill()
            w.wait(10)
        topo.delete(conn.channel())
        conn.close()


def main(argv: List[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("worker")
    w.add_argument("--url", required=True)
    w.add_argument("--prefix", required=True)
    w.add_argument("--pool", choices=("small", "large"), required=True)
    w.add_argument("--prefetch", type=int, default=1)
    dm = sub.add_parser("demo")
    dm.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    args = ap.parse_args(argv)
    if args.cmd == "worker":
        run_worker(args.url, args.prefix, args.pool, args.prefetch)
    else:
        demo(args.url)


if __name__ == "__main__":
    main(sys.argv[1:])
