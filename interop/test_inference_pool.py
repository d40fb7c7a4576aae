"""The inference pool example (interop/examples/inference_pool) end to end: topic routing
by task type, priorities, per-message TTL, retries through the x-delayed-message
exchange, dead-lettering with x-death, results by direct reply-to, and a worker killed
mid-task. Workers are separate processes; every wait is bounded.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pika
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "examples" / "inference_pool"))
import pool  # noqa: E402

POOL_PY = Path(pool.__file__).resolve()
WAIT = 60.0  # bound for a whole run, seconds


class WorkerProcess:
    """A worker subprocess whose START/DONE/... lines are read by a thread."""

    def __init__(self, url: str, prefix: str, kind: str, prefetch: int):
        self.kind = kind
        self.proc = subprocess.Popen(
            [sys.executable, str(POOL_PY), "worker", "--url", url, "--prefix", prefix,
             "--pool", kind, "--prefetch", str(prefetch)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: "queue.Queue[str]" = queue.Queue()
        self.log = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.log.append(line.rstrip())
            self.lines.put(line.rstrip())

    def wait_for(self, word: str, timeout: float = 15.0) -> str:
        """The next output line starting with ``word`` (bounded)."""
        import time
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"worker never printed {word}: {self.log[-20:]}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line.startswith(word):
                return line

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


def url_of(broker) -> str:
    return f"amqp://{broker.username}:{broker.password}@{broker.host}:{broker.port}/%2F"


@pytest.fixture
def topo(broker, names):
    t = pool.Topology(names.prefix + "." + os.urandom(4).hex())
    conn = pika.BlockingConnection(broker.params())
    t.declare(conn.channel())
    yield t
    try:
        t.delete(conn.channel())
    finally:
        conn.close()


@pytest.fixture
def workers():
    started = []
    yield started
    for w in started:
        w.stop()


def start(workers, broker, topo, kind, prefetch) -> WorkerProcess:
    w = WorkerProcess(url_of(broker), topo.prefix, kind, prefetch)
    workers.append(w)
    w.wait_for("READY")
    return w


def expected(n: int) -> int:
    return pool.count_primes(n)


def test_every_task_answered_or_dead_lettered_urgent_first(broker, connect, topo, workers):
    d = pool.Dispatcher(connect(), topo)
    sizes = {"small": 20_000, "large": 150_000}

    # Stale tasks: a 1 ms TTL while no worker runs; they die in the queue.
    stale = [f"stale{i}" for i in range(3)]
    for tid in stale:
        d.submit(tid, "small", sizes["small"], ttl_ms=1)
    assert d.pump(lambda: all(t in d.dead for t in stale), 15), d.dead

    normal, urgent = [], []
    for i in range(60):
        for kind in ("small", "large"):
            tid = f"n{kind}{i}"
            normal.append((tid, kind))
            # A few flaky tasks succeed on their second attempt; two never do.
            fail_until = 1 if i in (5, 6) else (99 if i == 9 and kind == "small" else 0)
            if i == 9 and kind == "large":
                fail_until = 99
            d.submit(tid, kind, sizes[kind], ttl_ms=120_000, fail_until=fail_until)
    for i in range(5):
        for kind in ("small", "large"):
            tid = f"u{kind}{i}"
            urgent.append((tid, kind))
            d.submit(tid, kind, sizes[kind], urgent=True)
    poison = {"nsmall9", "nlarge9"}

    prefetch = {"small": 8, "large": 1}
    for kind in ("small", "large"):
        for _ in range(2):
            start(workers, broker, topo, kind, prefetch[kind])

    everything = [t for t, _ in normal + urgent]
    assert d.pump(lambda: all(t in d.answers or t in d.dead for t in everything), WAIT), (
        f"missing: {[t for t in everything if t not in d.answers and t not in d.dead]}")

    # Each task is either answered (correctly) or dead-lettered, never both.
    for tid, kind in normal + urgent:
        if tid in poison:
            assert tid not in d.answers
            death = d.dead[tid]
            assert death["reason"] == "rejected", death
            assert death["queue"] == topo.pool(kind)
        else:
            assert tid in d.answers, tid
            assert tid not in d.dead
            assert d.answers[tid].result == expected(sizes[kind])
            assert d.answers[tid].pool == kind
    for tid in stale:
        assert d.dead[tid]["reason"] == "expired"
        assert d.dead[tid]["queue"] == topo.pool("small")
    # Flaky tasks were answered after a delayed retry.
    assert d.answers["nsmall5"].attempt == 1 and d.answers["nlarge6"].attempt == 1

    # Urgent tasks finish first: in each pool, every urgent answer arrives before the
    # pool has answered more than (urgent tasks + what its workers may hold unacked).
    for kind in ("small", "large"):
        ranks = sorted(a.rank for t, a in d.answers.items() if a.pool == kind)
        pos = {r: i for i, r in enumerate(ranks)}
        bound = 5 + 2 * prefetch[kind]
        late = [t for t, k in urgent if k == kind and pos[d.answers[t].rank] >= bound]
        assert not late, f"{kind}: urgent tasks answered late: {late}"


def test_no_task_lost_when_a_worker_is_killed_mid_task(broker, connect, topo, workers):
    d = pool.Dispatcher(connect(), topo)
    ids = [f"k{i}" for i in range(12)]
    # The first task is big, so the victim is surely still computing when killed.
    d.submit(ids[0], "large", 3_000_000)
    for tid in ids[1:]:
        d.submit(tid, "large", 100_000)
    victim = start(workers, broker, topo, "large", 1)
    line = victim.wait_for("START")
    assert line.split()[1] == ids[0], line
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait(timeout=10)
    start(workers, broker, topo, "large", 2)
    assert d.pump(lambda: all(t in d.answers for t in ids), WAIT), (
        f"lost: {[t for t in ids if t not in d.answers]}")
    assert d.answers[ids[0]].result == expected(3_000_000)
    assert not d.dead
