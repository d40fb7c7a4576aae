"""A real Celery 5.5 worker whose queues are quorum queues (RabbitMQ 4's recommended setup).

The worker runs as its own process (`celery -A quorum_tasks worker`, app in
interop/celery_app/) against the broker under test, with task_default_queue_type =
"quorum", acks_late and prefetch 1. Covered: topic routing of tasks to two quorum
queues, results back over the rpc:// backend, a retry with a countdown (Celery's native
delayed delivery: 28 quorum queues with x-message-ttl, x-overflow reject-publish and
x-dead-letter-strategy at-least-once chained by dead-lettering), and prefetch 1 with late
acks (a running task keeps the next ones in the queue). Every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pika
import pytest

import celery  # noqa: F401  (interop/requirements.txt installs it)

HERE = Path(__file__).resolve().parent
APP_DIR = HERE / "celery_app"
WAIT = 30.0  # upper bound for a single wait, seconds


def _wait_for(predicate, what: str, timeout: float = WAIT, proc=None, log=None):
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"celery worker exited ({proc.returncode}) while waiting for {what}\n"
                        f"{log.read_text(errors='replace')[-3000:] if log else ''}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\n"
                        f"{log.read_text(errors='replace')[-3000:] if log else ''}")
        time.sleep(0.05)  # polling, bounded by the deadline above


@pytest.fixture(scope="module")
def celery_env(broker, tmp_path_factory):
    work = tmp_path_factory.mktemp("celery")
    vhost = "%2F" if broker.vhost == "/" else broker.vhost
    env = dict(os.environ)
    env.update(
        CELERY_BROKER_URL=f"amqp://{broker.username}:{broker.password}@{broker.host}:{broker.port}/{vhost}",
        CELERY_ATTEMPTS_DIR=str(work),
        PYTHONPATH=str(APP_DIR),
        C_FORCE_ROOT="1",
    )
    log = work / "worker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "quorum_tasks", "worker", "-Q",
             "gpu-llm,cpu-embed", "-c", "1", "--pool", "solo", "--without-gossip",
             "--without-mingle", "--loglevel", "info"],
            cwd=str(APP_DIR), env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        _wait_for(lambda: "ready." in log.read_text(errors="replace"), "the worker to be ready",
                  proc=proc, log=log)
        os.environ.update({k: env[k] for k in ("CELERY_BROKER_URL", "CELERY_ATTEMPTS_DIR")})
        sys.path.insert(0, str(APP_DIR))
        import quorum_tasks  # noqa: E402  (needs CELERY_BROKER_URL set first)

        yield quorum_tasks, work, log, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def _queue_info(broker, name):
    conn = pika.BlockingConnection(broker.params())
    try:
        ok = conn.channel().queue_declare(name, passive=True)
        return ok.method.message_count, ok.method.consumer_count
    finally:
        conn.close()


def test_worker_declares_quorum_queues(celery_env, broker):
    tasks, _, _, _ = celery_env
    conn = pika.BlockingConnection(broker.params())
    try:
        ch = conn.channel()
        # Redeclaring with the type the worker used succeeds; another type is inequivalent.
        ch.queue_declare("gpu-llm", durable=True, arguments={"x-queue-type": "quorum"})
        ch.queue_declare("celery_delayed_0", durable=True, arguments={
            "x-queue-type": "quorum", "x-overflow": "reject-publish", "x-message-ttl": 1000,
            "x-dead-letter-exchange": "celery_delayed_delivery",
            "x-dead-letter-strategy": "at-least-once"})
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
            ch.queue_declare("gpu-llm", durable=True, arguments={"x-queue-type": "classic"})
        assert err.value.reply_code == 406
        assert "inequivalent arg 'x-queue-type'" in err.value.reply_text
    finally:
        conn.close()
    assert _queue_info(broker, "gpu-llm")[1] == 1
    assert _queue_info(broker, "cpu-embed")[1] == 1


def test_tasks_routed_to_quorum_queues_and_results_back(celery_env):
    tasks, _, log, _ = celery_env
    generated = tasks.generate.delay("hello quorum")
    embedded = tasks.embed.delay("abc")
    assert generated.get(timeout=WAIT) == {"model": "llm", "text": "hello quorum"[::-1]}
    assert embedded.get(timeout=WAIT) == [3, 294]
    text = log.read_text(errors="replace")
    assert f"quorum_tasks.generate[{generated.id}] succeeded" in text
    assert f"quorum_tasks.embed[{embedded.id}] succeeded" in text


def test_retry_with_countdown_through_native_delayed_delivery(celery_env):
    tasks, work, _, _ = celery_env
    key = uuid.uuid4().hex
    started = time.monotonic()
    result = tasks.flaky.delay(key).get(timeout=WAIT)
    assert result == {"key": key, "attempts": 2, "retries": 1}
    # countdown=1 goes through celery_delayed_0 (x-message-ttl 1000): not before a second.
    assert time.monotonic() - started >= 0.9
    assert (work / f"attempt-{key}").read_text() == "2"


def test_prefetch_one_with_late_acks_keeps_the_rest_queued(celery_env, broker):
    tasks, work, log, proc = celery_env
    key = uuid.uuid4().hex
    held = tasks.hold.delay(key)
    _wait_for(lambda: (work / f"started-{key}").exists(), "the held task to start",
              proc=proc, log=log)
    waiting = [tasks.generate.delay(f"queued {i}") for i in range(3)]
    # The publishes are confirmed (confirm_publish), so they are in the queue now; the
    # worker holds one unacked task (prefetch 1, acks_late) and gets no other.
    ready, consumers = _queue_info(broker, "gpu-llm")
    assert (ready, consumers) == (3, 1)
    (work / f"release-{key}").touch()
    assert held.get(timeout=WAIT) == "released"
    assert [r.get(timeout=WAIT)["text"] for r in waiting] == [f"queued {i}"[::-1] for i in range(3)]
    _wait_for(lambda: _queue_info(broker, "gpu-llm")[0] == 0, "gpu-llm to drain")
