"""Shared fixtures for the pika interop suite.

Which broker is tested:

* ``AMQP_URL`` set (e.g. ``amqp://guest:guest@127.0.0.1:5673/%2F``): that server is used
  as it is, nothing is started. Useful to check the tests themselves against RabbitMQ.
* otherwise the WarrenMQ binary (``WARRENMQ_BIN``, default ``<repo>/target/release/warrenmq``)
  is started once per session on a free loopback port with a fresh temporary data
  directory, and stopped (SIGTERM, bounded wait, then SIGKILL) at the end.

``WARRENMQ_LOG_LEVEL`` (default ``warn``) is passed to the broker as ``--log-level``; its
output goes to ``broker.log`` in the temporary directory and the tail of it is shown when
the broker fails to start or dies during a test. ``WARRENMQ_KEEP_DATA=1`` keeps that
directory after the run.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

import pika
import pytest

REPO = Path(__file__).resolve().parent.parent
DEFAULT_BIN = REPO / "target" / "release" / "warrenmq"

START_TIMEOUT = 15.0  # seconds to wait for the AMQP port to accept connections
STOP_TIMEOUT = 10.0  # seconds to wait after SIGTERM before SIGKILL


@dataclass
class Broker:
    host: str
    port: int
    vhost: str = "/"
    username: str = "guest"
    password: str = "guest"
    process: Optional[subprocess.Popen] = None
    log_path: Optional[Path] = None
    description: str = ""

    def params(self, username: Optional[str] = None, password: Optional[str] = None,
               **overrides) -> pika.ConnectionParameters:
        """Connection parameters for this broker; every wait is bounded."""
        kwargs = dict(
            host=self.host,
            port=self.port,
            virtual_host=self.vhost,
            credentials=pika.PlainCredentials(
                self.username if username is None else username,
                self.password if password is None else password,
            ),
            connection_attempts=1,
            socket_timeout=5,
            stack_timeout=10,
            blocked_connection_timeout=10,
        )
        kwargs.update(overrides)
        return pika.ConnectionParameters(**kwargs)

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no broker log)"
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:]) or "(broker log is empty)"

    def died(self) -> Optional[int]:
        """Exit code if the started broker process is gone, else None."""
        if self.process is None:
            return None
        return self.process.poll()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT)


@pytest.fixture(scope="session")
def broker():
    url = os.environ.get("AMQP_URL")
    if url:
        p = pika.URLParameters(url)
        yield Broker(
            host=p.host,
            port=p.port,
            vhost=p.virtual_host,
            username=p.credentials.username,
            password=p.credentials.password,
            description=f"external broker at {p.host}:{p.port}",
        )
        return

    binary = Path(os.environ.get("WARRENMQ_BIN", str(DEFAULT_BIN)))
    if not binary.is_file() or not os.access(binary, os.X_OK):
        pytest.exit(
            f"broker binary {binary} not found or not executable; run `cargo build --release`, "
            "set WARRENMQ_BIN, or set AMQP_URL to test a running server",
            returncode=1,
        )

    workdir = Path(tempfile.mkdtemp(prefix="warrenmq-interop-"))
    data_dir = workdir / "data"
    data_dir.mkdir()
    log_path = workdir / "broker.log"
    port = _free_port()
    cmd = [
        str(binary), "serve",
        "--amqp-addr", f"127.0.0.1:{port}",
        "--http-addr", "127.0.0.1:0",
        "--metrics-addr", "127.0.0.1:0",
        "--data-dir", str(data_dir),
        "--log-level", os.environ.get("WARRENMQ_LOG_LEVEL", "warn"),
    ]
    log_file = open(log_path, "wb")
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, cwd=str(workdir))
    b = Broker(host="127.0.0.1", port=port, process=proc, log_path=log_path,
               description=f"{binary} on 127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.exit(
                    f"broker exited with code {proc.returncode} before accepting connections\n"
                    f"command: {' '.join(cmd)}\n--- broker log ---\n{b.log_tail()}",
                    returncode=1,
                )
            if _port_open("127.0.0.1", port):
                break
            if time.monotonic() > deadline:
                pytest.exit(
                    f"broker did not accept connections on port {port} within "
                    f"{START_TIMEOUT:.0f}s\ncommand: {' '.join(cmd)}\n"
                    f"--- broker log ---\n{b.log_tail()}",
                    returncode=1,
                )
            time.sleep(0.05)  # polling the port, bounded by the deadline above
        yield b
    finally:
        _stop(proc)
        log_file.close()
        if os.environ.get("WARRENMQ_KEEP_DATA") == "1":
            print(f"\nbroker data and log kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(autouse=True)
def _broker_alive(broker):
    """Turn a broker crash into a clear error naming the test during which it happened."""
    code = broker.died()
    if code is not None:
        pytest.fail(f"broker is not running (exit code {code})\n--- broker log ---\n"
                    f"{broker.log_tail()}", pytrace=False)
    yield
    code = broker.died()
    if code is not None:
        pytest.fail(f"broker died during this test (exit code {code})\n--- broker log ---\n"
                    f"{broker.log_tail()}", pytrace=False)


@pytest.fixture
def params(broker) -> pika.ConnectionParameters:
    return broker.params()


@dataclass
class Names:
    """Unique queue/exchange names for one test, deleted again afterwards."""

    prefix: str
    queues: List[str] = field(default_factory=list)
    exchanges: List[str] = field(default_factory=list)

    def queue(self, tag: str = "q") -> str:
        name = f"{self.prefix}.{tag}.{uuid.uuid4().hex[:12]}"
        self.queues.append(name)
        return name

    def exchange(self, tag: str = "x") -> str:
        name = f"{self.prefix}.{tag}.{uuid.uuid4().hex[:12]}"
        self.exchanges.append(name)
        return name


@pytest.fixture
def names(request, broker):
    n = Names(prefix="interop." + request.node.name.split("[")[0][:40])
    yield n
    if not (n.queues or n.exchanges):
        return
    # Best effort: keeps an external broker tidy; errors here are not the test's result.
    try:
        conn = pika.BlockingConnection(broker.params())
    except Exception:
        return
    try:
        for kind, items in (("queue", n.queues), ("exchange", n.exchanges)):
            for name in items:
                try:
                    ch = conn.channel()
                    if kind == "queue":
                        ch.queue_delete(name)
                    else:
                        ch.exchange_delete(name)
                    ch.close()
                except Exception:
                    if not conn.is_open:
                        return
    finally:
        try:
            if conn.is_open:
                conn.close()
        except Exception:
            pass


@pytest.fixture
def connect(params) -> Callable[..., pika.BlockingConnection]:
    """Open BlockingConnections in the test's thread; all are closed at teardown."""
    opened: List[pika.BlockingConnection] = []

    def _connect(p: Optional[pika.ConnectionParameters] = None) -> pika.BlockingConnection:
        conn = pika.BlockingConnection(p or params)
        opened.append(conn)
        return conn

    yield _connect
    for conn in opened:
        try:
            if conn.is_open:
                conn.close()
        except Exception:
            pass


def poll(fn, timeout=10.0, step=0.02):
    """Call fn until it returns something truthy and return that, bounded in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(step)  # polling, bounded by the deadline above
    raise AssertionError("condition not met in time")
