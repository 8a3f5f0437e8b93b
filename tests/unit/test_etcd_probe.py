"""The probe against a real local TLS server: it must tell served from refused, and who refused."""

from __future__ import annotations

import base64
import contextlib
import datetime
import http.server
import json
import socket
import ssl
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import etcd_probe


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


def _issue(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    cn: str,
    usage: x509.ObjectIdentifier,
    san: list[x509.GeneralName] | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-ca")])
    now = datetime.datetime.now(datetime.UTC)
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    import ipaddress

    server, server_key = _issue(
        ca_key,
        ca_name,
        "server",
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client, client_key = _issue(ca_key, ca_name, "client", ExtendedKeyUsageOID.CLIENT_AUTH)
    paths = Pki(d / "ca.crt", d / "server.crt", d / "server.key", d / "client.crt", d / "client.key")
    paths.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths.server_cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths.client_cert.write_bytes(client.public_bytes(serialization.Encoding.PEM))
    _write_key(paths.server_key, server_key)
    _write_key(paths.client_key, client_key)
    return paths


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self._answer(b'{"health":"true"}')

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        value = base64.b64encode(b"stored").decode()
        self._answer(json.dumps({"kvs": [{"key": body["key"], "value": value}]}).encode())

    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _KeepAliveHandler(_Handler):
    """Keeps connections open (as etcd does) and counts the connections it accepted."""

    protocol_version = "HTTP/1.1"
    connections = 0
    close_after: int | None = None

    def setup(self) -> None:
        super().setup()
        type(self).connections += 1
        self._served = 0

    def _answer(self, body: bytes) -> None:
        super()._answer(body)
        self._served += 1
        if self.close_after is not None and self._served >= self.close_after:
            self.close_connection = True


@contextlib.contextmanager
def _serve(pki: Pki, handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """An mTLS server like etcd's client port: TLS 1.2+, AEAD suites, client cert required."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # Capped at 1.2 so a refused client certificate fails inside the handshake: under TLS 1.3
    # Python's server may close before its alert reaches the client, a race etcd does not show.
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("ECDHE+AESGCM")
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    ctx.load_verify_locations(pki.ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()


@pytest.fixture(scope="module")
def server(pki: Pki) -> Iterator[str]:
    with _serve(pki, _Handler) as url:
        yield url


def test_served_with_a_client_certificate(pki: Pki, server: str) -> None:
    ctx = etcd_probe.build_context(str(pki.ca), cert=str(pki.client_cert), key=str(pki.client_key))
    outcome = etcd_probe.request(server + "/health", ctx)
    assert outcome.served and outcome.status == 200
    assert outcome.tls_version in ("TLSv1.2", "TLSv1.3")


def test_refused_without_a_client_certificate_reports_the_servers_alert(pki: Pki, server: str) -> None:
    outcome = etcd_probe.request(server + "/health", etcd_probe.build_context(str(pki.ca)))
    assert not outcome.served
    assert outcome.error and "alert" in outcome.error.lower()


def test_old_tls_version_is_offered_and_refused_by_the_server(pki: Pki, server: str) -> None:
    ctx = etcd_probe.build_context(
        str(pki.ca), cert=str(pki.client_cert), key=str(pki.client_key), tls_version="1.1"
    )
    assert ctx.maximum_version == ssl.TLSVersion.TLSv1_1
    outcome = etcd_probe.request(server + "/health", ctx)
    assert not outcome.served
    assert outcome.error and "alert" in outcome.error.lower(), outcome


def test_cbc_suites_are_refused_and_aead_served(pki: Pki, server: str) -> None:
    creds = {"cert": str(pki.client_cert), "key": str(pki.client_key)}
    cbc = etcd_probe.build_context(str(pki.ca), ciphers="ECDHE-ECDSA-AES128-SHA", **creds)
    refused = etcd_probe.request(server + "/health", cbc)
    assert not refused.served and refused.error and "alert" in refused.error.lower(), refused
    gcm = etcd_probe.build_context(str(pki.ca), ciphers="ECDHE-ECDSA-AES128-GCM-SHA256", **creds)
    served = etcd_probe.request(server + "/health", gcm)
    assert (
        served.served and served.tls_version == "TLSv1.2" and served.cipher == "ECDHE-ECDSA-AES128-GCM-SHA256"
    )


def test_server_not_signed_by_the_given_ca_is_not_trusted(pki: Pki, server: str, tmp_path: Path) -> None:
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "other")])
    other_ca, _ = _issue(other_key, other_name, "other", ExtendedKeyUsageOID.SERVER_AUTH)
    (tmp_path / "other.crt").write_bytes(other_ca.public_bytes(serialization.Encoding.PEM))
    ctx = etcd_probe.build_context(
        str(tmp_path / "other.crt"), cert=str(pki.client_cert), key=str(pki.client_key)
    )
    outcome = etcd_probe.request(server + "/health", ctx)
    assert not outcome.served and outcome.error and "CERTIFICATE_VERIFY_FAILED" in outcome.error


def test_kv_get_through_the_cli_decodes_values(
    pki: Pki, server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = etcd_probe.main(
        [
            *("kv", "get", "/k", "--endpoint", server, "--cacert", str(pki.ca)),
            *("--cert", str(pki.client_cert), "--key", str(pki.client_key)),
        ]
    )
    assert rc == 0
    assert json.loads(json.loads(capsys.readouterr().out)["body"]) == ["stored"]


def test_the_etcd_key_is_not_the_tls_client_key() -> None:
    # Both were once parsed into one attribute: every write went to the key file's path.
    args = etcd_probe.parse_args(
        ["kv", "put", "/storage/marker", "v", "--endpoint", "https://x", "--key", "/pki/client.key"]
    )
    assert (args.etcd_key, args.key, args.value) == ("/storage/marker", "/pki/client.key", "v")


def test_kv_requests_are_base64_json() -> None:
    path, body = etcd_probe.kv_request("put", "/a", "b")
    assert path == "/v3/kv/put"
    assert json.loads(body) == {"key": "L2E=", "value": "Yg=="}
    assert etcd_probe.kv_request("get", "/a", None)[0] == "/v3/kv/range"
    # Raw bytes (an encrypted Secret) arrive already in base64 and are sent as they are.
    raw = base64.b64encode(b"k8s:enc:aescbc:v1:k1:\x00\xff").decode()
    _, body = etcd_probe.kv_request("put", "/a", raw, value_base64=True)
    assert json.loads(body)["value"] == raw
    path, body = etcd_probe.kv_request("delete-prefix", "/registry/secrets/ns/", None)
    assert path == "/v3/kv/deleterange"
    assert base64.b64decode(json.loads(body)["range_end"]) == b"/registry/secrets/ns0"
    assert etcd_probe.kv_values('{"kvs":[{"value":"Yg=="}]}') == ["b"]
    assert etcd_probe.kv_values("{}") == []


def test_tcp_connect_reports_a_closed_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    outcome = etcd_probe.tcp_connect("127.0.0.1", port)
    assert not outcome.served and outcome.error and "refused" in outcome.error.lower()


def test_watch_writes_counts_no_failure_while_the_server_serves(
    pki: Pki, server: str, tmp_path: Path
) -> None:
    ctx = etcd_probe.build_context(str(pki.ca), cert=str(pki.client_cert), key=str(pki.client_key))
    watch = etcd_probe.watch_writes(
        [server], ctx, stop_file=str(tmp_path / "stop"), max_seconds=1.0, interval=0.05
    )
    assert watch.attempts >= 2 and watch.failed == 0 and watch.longest_outage_seconds == 0
    assert 0 < watch.longest_write_seconds < 1.0, watch


def test_watch_writes_measures_an_outage_when_no_endpoint_accepts(
    pki: Pki, server: str, tmp_path: Path
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"https://127.0.0.1:{s.getsockname()[1]}"
    ctx = etcd_probe.build_context(str(pki.ca), cert=str(pki.client_cert), key=str(pki.client_key))
    watch = etcd_probe.watch_writes(
        [closed], ctx, stop_file=str(tmp_path / "stop"), max_seconds=0.5, interval=0.05
    )
    assert watch.attempts >= 2 and watch.failed == watch.attempts
    assert watch.longest_outage_seconds >= 0.3
    (tmp_path / "stop").touch()
    stopped = etcd_probe.watch_writes([server], ctx, stop_file=str(tmp_path / "stop"), max_seconds=5.0)
    assert stopped.attempts == 0


@pytest.mark.parametrize("close_after", [None, 3])
def test_one_connection_writes_never_reopen_a_cut_connection(
    pki: Pki, tmp_path: Path, close_after: int | None
) -> None:
    class Handler(_KeepAliveHandler):
        pass

    Handler.close_after = close_after
    handler = Handler
    ctx = etcd_probe.build_context(str(pki.ca), cert=str(pki.client_cert), key=str(pki.client_key))
    with _serve(pki, handler) as url:
        watch = etcd_probe.watch_writes(
            [url], ctx, stop_file=str(tmp_path / "stop"), max_seconds=0.6, interval=0.05, one_connection=True
        )
    assert handler.connections == 1
    assert watch.attempts >= 5
    if close_after is None:
        assert watch.failed == 0, watch
    else:
        # The server closed the connection after its third answer: every later write fails.
        assert watch.failed == watch.attempts - close_after, watch


def test_percentile_is_the_nearest_rank() -> None:
    samples = [float(n) for n in range(100, 0, -1)]
    assert etcd_probe.percentile(samples, 0.50) == 50.0
    assert etcd_probe.percentile(samples, 0.99) == 99.0
    assert etcd_probe.percentile([7.0], 0.99) == 7.0
    with pytest.raises(ValueError):
        etcd_probe.percentile([], 0.5)


def test_latency_times_every_request_over_one_kept_connection(pki: Pki) -> None:
    _KeepAliveHandler.connections = 0
    ctx = etcd_probe.build_context(str(pki.ca), cert=str(pki.client_cert), key=str(pki.client_key))
    with _serve(pki, _KeepAliveHandler) as url:
        runs = etcd_probe.measure_latency(url, ctx, count=25, value_size=64)
    assert [(r.operation, r.count, r.failed) for r in runs] == [("put", 25, 0), ("range", 25, 0)]
    assert all(0 < r.p50_ms <= r.p99_ms <= r.max_ms for r in runs)
    # 50 timed requests and the clean-up, without a new handshake in between.
    assert _KeepAliveHandler.connections == 1


def test_latency_counts_refused_requests_as_failed(pki: Pki) -> None:
    class Refusing(_KeepAliveHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

    ctx = etcd_probe.build_context(str(pki.ca), cert=str(pki.client_cert), key=str(pki.client_key))
    with _serve(pki, Refusing) as url:
        runs = etcd_probe.measure_latency(url, ctx, count=3, value_size=8)
    assert [(r.operation, r.failed) for r in runs] == [("put", 3), ("range", 3)]


def test_latency_without_a_client_certificate_stops_at_the_handshake(pki: Pki) -> None:
    ctx = etcd_probe.build_context(str(pki.ca))
    with _serve(pki, _KeepAliveHandler) as url, pytest.raises((ssl.SSLError, OSError)):
        etcd_probe.measure_latency(url, ctx, count=3, value_size=8)


class _StoreHandler(_Handler):
    """A tiny KV store: puts kept (all but every `forget_every`-th), prefix ranges and deletes served."""

    store: ClassVar[dict[str, str]] = {}
    puts = 0
    forget_every: int | None = None
    ranges_fail = False

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        key = base64.b64decode(body["key"]).decode()
        end = base64.b64decode(body.get("range_end", "")).decode()
        cls = type(self)
        if self.path == "/v3/kv/put":
            cls.puts += 1
            if cls.forget_every is None or cls.puts % cls.forget_every:
                cls.store[key] = body["value"]
            self._answer(b"{}")
        elif self.path == "/v3/kv/range" and cls.ranges_fail:
            self.send_error(503)
        elif self.path == "/v3/kv/range":
            kvs = [{"key": base64.b64encode(k.encode()).decode()} for k in cls.store if key <= k < end]
            self._answer(json.dumps({"kvs": kvs}).encode())
        else:
            for k in [k for k in cls.store if key <= k < end]:
                del cls.store[k]
            self._answer(b"{}")


@pytest.mark.parametrize(("forget_every", "ranges_fail"), [(None, False), (2, False), (None, True)])
def test_distinct_key_writes_are_read_back_and_a_lost_one_is_counted(
    pki: Pki, tmp_path: Path, forget_every: int | None, ranges_fail: bool
) -> None:
    class Handler(_StoreHandler):
        store: ClassVar[dict[str, str]] = {}  # one store per test

    Handler.forget_every, Handler.ranges_fail = forget_every, ranges_fail
    ctx = etcd_probe.build_context(str(pki.ca), cert=str(pki.client_cert), key=str(pki.client_key))
    with _serve(pki, Handler) as url:
        watch = etcd_probe.watch_writes(
            [url], ctx, stop_file=str(tmp_path / "stop"), max_seconds=1.5, interval=0.05, distinct_keys=True
        )
    assert watch.attempts >= 2 and watch.failed == 0 and watch.acknowledged == watch.attempts
    if ranges_fail:
        # Nothing read back is not "nothing lost".
        assert watch.lost is None, watch
    elif forget_every is None:
        assert watch.lost == 0 and Handler.store == {}, watch  # read back, then deleted
    else:
        assert watch.lost == watch.attempts // forget_every, watch
