"""pika over TLS (amqps): a broker of its own, started with a certificate made by the
``openssl`` command line and client-certificate verification required.

Skipped when ``openssl`` is missing, and when testing an external broker (``AMQP_URL``),
whose TLS setup this suite cannot know.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import pika
import pytest

from conftest import DEFAULT_BIN, START_TIMEOUT, Broker, _free_port, _port_open, _stop

OPENSSL = shutil.which("openssl")
# pika reports a failed handshake as its own error or lets the ssl module's through.
REFUSED = (pika.exceptions.AMQPConnectionError, ssl.SSLError)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([OPENSSL, *args], cwd=str(cwd), check=True, timeout=60,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _make_pki(d: Path) -> None:
    """ca.pem/ca.key, server.pem/server.key (localhost, 127.0.0.1), client.pem/client.key."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=WarrenMQ interop CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    for name, ext in (
        ("server", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ):
        (d / f"{name}.ext").write_text(ext)
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={'localhost' if name == 'server' else 'interop-client'}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
                 "-extfile", f"{name}.ext", cwd=d)


@pytest.fixture(scope="module")
def tls_broker():
    if os.environ.get("AMQP_URL"):
        pytest.skip("TLS tests start their own broker; not run against AMQP_URL")
    if OPENSSL is None:
        pytest.skip("the openssl command line is needed to make test certificates")
    binary = Path(os.environ.get("WARRENMQ_BIN", str(DEFAULT_BIN)))
    if not binary.is_file():
        pytest.skip(f"broker binary {binary} not found")
    workdir = Path(tempfile.mkdtemp(prefix="warrenmq-interop-tls-"))
    pki = workdir / "pki"
    pki.mkdir()
    _make_pki(pki)
    (workdir / "data").mkdir()
    port, tls_port = _free_port(), _free_port()
    cmd = [
        str(binary), "serve",
        "--amqp-addr", f"127.0.0.1:{port}",
        "--amqps-addr", f"127.0.0.1:{tls_port}",
        "--http-addr", "127.0.0.1:0",
        "--metrics-addr", "127.0.0.1:0",
        "--data-dir", str(workdir / "data"),
        "--tls-cert", str(pki / "server.pem"),
        "--tls-key", str(pki / "server.key"),
        "--tls-ca", str(pki / "ca.pem"),
        "--tls-verify-peer",
        "--tls-fail-if-no-peer-cert",
        "--log-level", os.environ.get("WARRENMQ_LOG_LEVEL", "warn"),
    ]
    log_path = workdir / "broker.log"
    log_file = open(log_path, "wb")
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, cwd=str(workdir))
    b = Broker(host="127.0.0.1", port=tls_port, process=proc, log_path=log_path,
               description=f"{binary} with amqps on 127.0.0.1:{tls_port}")
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _port_open("127.0.0.1", tls_port):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"TLS broker did not start\n{b.log_tail()}", pytrace=False)
            time.sleep(0.05)  # polling the port, bounded by the deadline above
        yield b, pki, port
    finally:
        _stop(proc)
        log_file.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _context(pki: Path, client_cert: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if client_cert:
        ctx.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
    return ctx


def _params(b: Broker, ctx: ssl.SSLContext) -> pika.ConnectionParameters:
    return b.params(ssl_options=pika.SSLOptions(ctx, server_hostname="localhost"))


def test_publish_consume_over_tls_with_client_certificate(tls_broker):
    b, pki, _ = tls_broker
    conn = pika.BlockingConnection(_params(b, _context(pki, client_cert=True)))
    try:
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.confirm_delivery()
        body = bytes(range(256)) * 600  # ~150 KB: many TLS records and AMQP frames
        ch.basic_publish("", q, body, pika.BasicProperties(content_type="application/x-test"))
        for method, props, got in ch.consume(q, inactivity_timeout=10):
            assert method is not None, "no delivery over TLS"
            assert got == body
            assert props.content_type == "application/x-test"
            ch.basic_ack(method.delivery_tag)
            break
        ch.cancel()
    finally:
        conn.close()


def test_client_without_certificate_is_refused(tls_broker):
    b, pki, _ = tls_broker
    with pytest.raises(REFUSED):
        pika.BlockingConnection(_params(b, _context(pki, client_cert=False)))


def test_server_certificate_is_checked_by_the_client(tls_broker):
    b, pki, _ = tls_broker
    ctx = ssl.create_default_context()  # system roots only: the test CA is unknown
    ctx.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
    with pytest.raises(REFUSED):
        pika.BlockingConnection(_params(b, ctx))


def test_plain_listener_still_serves(tls_broker):
    b, _, port = tls_broker
    conn = pika.BlockingConnection(b.params(port=port))
    try:
        assert conn.channel().is_open
    finally:
        conn.close()
