"""A Celery 5.5 app whose queues are quorum queues, as RabbitMQ 4 users configure it.

Used by interop/test_celery_quorum.py, which starts a real `celery worker` process on it.
The broker URL comes from CELERY_BROKER_URL; results travel back over the `rpc://` backend.
"""

import os

from celery import Celery
from kombu import Exchange, Queue

app = Celery("quorum_tasks", broker=os.environ["CELERY_BROKER_URL"], backend="rpc://")

# Topic exchange: native delayed delivery (countdown/ETA on quorum queues) needs one.
models = Exchange("inference", type="topic")

app.conf.update(
    task_default_queue_type="quorum",
    task_queues=[
        Queue("gpu-llm", models, routing_key="llm.#", queue_arguments={"x-queue-type": "quorum"}),
        Queue("cpu-embed", models, routing_key="embed.#",
              queue_arguments={"x-queue-type": "quorum"}),
    ],
    task_default_exchange="inference",
    task_default_exchange_type="topic",
    task_default_queue="gpu-llm",
    task_default_routing_key="llm.default",
    task_routes={
        "quorum_tasks.generate": {"queue": "gpu-llm", "routing_key": "llm.generate"},
        "quorum_tasks.embed": {"queue": "cpu-embed", "routing_key": "embed.text"},
        "quorum_tasks.flaky": {"queue": "gpu-llm", "routing_key": "llm.flaky"},
        "quorum_tasks.hold": {"queue": "gpu-llm", "routing_key": "llm.hold"},
    },
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    broker_transport_options={"confirm_publish": True},
    broker_connection_retry_on_startup=True,
    result_expires=300,
)

ATTEMPTS_DIR = os.environ.get("CELERY_ATTEMPTS_DIR", "/tmp")
HOLD_LIMIT = 30.0  # seconds a held task waits for its release file at most


@app.task(name="quorum_tasks.generate")
def generate(prompt):
    return {"model": "llm", "text": prompt[::-1]}


@app.task(name="quorum_tasks.embed")
def embed(text):
    return [len(text), sum(map(ord, text)) % 997]


@app.task(name="quorum_tasks.flaky", bind=True, max_retries=3)
def flaky(self, key):
    """Fails on the first attempt and retries with a countdown (native delayed delivery)."""
    marker = os.path.join(ATTEMPTS_DIR, f"attempt-{key}")
    attempts = 0
    if os.path.exists(marker):
        with open(marker) as f:
            attempts = int(f.read())
    attempts += 1
    with open(marker, "w") as f:
        f.write(str(attempts))
    if attempts == 1:
        raise self.retry(countdown=1)
    return {"key": key, "attempts": attempts, "retries": self.request.retries}


@app.task(name="quorum_tasks.hold")
def hold(key):
    """Marks itself started, then runs until the test creates its release file (bounded)."""
    import time

    open(os.path.join(ATTEMPTS_DIR, f"started-{key}"), "w").close()
    release = os.path.join(ATTEMPTS_DIR, f"release-{key}")
    deadline = time.monotonic() + HOLD_LIMIT
    while not os.path.exists(release):
        if time.monotonic() > deadline:
            return "timed out"
        time.sleep(0.02)  # polling the release file, bounded by HOLD_LIMIT
    return "released"
