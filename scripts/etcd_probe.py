#!/usr/bin/env python3
"""A dependency-free mTLS probe for etcd: real handshakes and requests, with the outcome as JSON.

It runs on the nodes (only Python's standard library) and is what the tests use to try the
attacks the hardening must stop and the requests it must still serve:

    etcd_probe.py request https://10.0.0.1:2379/health --cacert ca.crt --cert c.crt --key c.key
    etcd_probe.py request https://10.0.0.1:2379/health --cacert ca.crt --tls-version 1.1
    etcd_probe.py kv put /probe/key value --endpoint https://10.0.0.1:2379 --cacert ... --cert ... --key ...
    etcd_probe.py kv get /probe/key --endpoint ...
    etcd_probe.py kv delete-prefix /probe/ --endpoint ...
    etcd_probe.py tcp 10.0.0.1 2381
    etcd_probe.py watch-writes --endpoints https://a:2379,https://b:2379 --stop-file /tmp/stop ...
    etcd_probe.py latency --endpoint https://10.0.0.1:2379 --count 1000 --cacert ... --cert ... --key ...

Every command prints one JSON object. The exit status is 0 when the request was served (an HTTP
2xx answer, or a TCP connection), 1 when it was refused or failed, 2 for bad usage. "error" says
who refused: a TLS alert from the server reads like "... alert ..." and a local failure does not.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import math
import select
import socket
import ssl
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

TLS_VERSIONS: dict[str, ssl.TLSVersion] = {
    "1.0": ssl.TLSVersion.TLSv1,
    "1.1": ssl.TLSVersion.TLSv1_1,
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}


@dataclass
class Outcome:
    """What happened to one probe."""

    served: bool
    status: int | None = None
    body: str = ""
    error: str | None = None
    tls_version: str | None = None
    cipher: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def build_context(
    cacert: str | None,
    *,
    cert: str | None = None,
    key: str | None = None,
    tls_version: str | None = None,
    ciphers: str | None = None,
    verify: bool = True,
) -> ssl.SSLContext:
    """A client context that validates the server against `cacert` and offers only what is asked.

    With verify=False the server is not checked at all, as an attacker would not check it: the
    probe then shows whether the *server* accepts the client.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif cacert:
        ctx.load_verify_locations(cafile=cacert)
    else:
        ctx.load_default_certs()
    if cert:
        ctx.load_cert_chain(certfile=cert, keyfile=key)
    if tls_version:
        version = TLS_VERSIONS[tls_version]
        if version < ssl.TLSVersion.TLSv1_2:
            # OpenSSL 3 refuses to even offer TLS 1.0/1.1 at its default security level; an
            # attacker's client would not be so polite, so neither is the probe.
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # offering them is the point
            ctx.minimum_version = version
            ctx.maximum_version = version
    if ciphers:
        # Cipher lists only govern TLS 1.2 and older, so cap the version to make them count.
        ctx.set_ciphers(ciphers + ":@SECLEVEL=0")
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def request(
    url: str,
    ctx: ssl.SSLContext | None,
    method: str = "GET",
    body: bytes | None = None,
    timeout: float = 5.0,
) -> Outcome:
    """Send one HTTP(S) request; `served` is true only for a 2xx answer."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = parts.path or "/"
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=timeout)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        if isinstance(conn, http.client.HTTPSConnection):
            conn.connect()
            _raise_pending_alert(conn.sock)
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        # Read what was negotiated now: the connection may close once the answer is read.
        sock = conn.sock
        tls_version, cipher = None, None
        if isinstance(sock, ssl.SSLSocket):
            tls_version = sock.version()
            negotiated = sock.cipher()
            cipher = negotiated[0] if negotiated else None
        response = conn.getresponse()
        text = response.read().decode("utf-8", "replace")
        return Outcome(
            served=200 <= response.status < 300,
            status=response.status,
            body=text,
            tls_version=tls_version,
            cipher=cipher,
        )
    except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
        return Outcome(served=False, error=f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()


def _raise_pending_alert(sock: socket.socket | None, wait: float = 0.5) -> None:
    """Surface a TLS alert the server sent right after the handshake.

    Under TLS 1.3 a server checks the client certificate after the client's side of the
    handshake is done, so a refusal arrives as an alert while the client is already writing its
    request; a write racing the server's close can then end in a bare reset that hides who
    refused. Reading whatever the server has sent first (an alert, or session tickets when it
    accepted) makes the outcome deterministic.
    """
    if not isinstance(sock, ssl.SSLSocket):
        return
    readable, _, _ = select.select([sock], [], [], wait)
    if not readable:
        return
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        sock.recv(1)
    except (ssl.SSLWantReadError, BlockingIOError):
        pass  # only session tickets: the server accepted us
    finally:
        sock.settimeout(timeout)


def tcp_connect(host: str, port: int, timeout: float = 3.0) -> Outcome:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return Outcome(served=True)
    except OSError as exc:
        return Outcome(served=False, error=f"{type(exc).__name__}: {exc}")


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def kv_request(action: str, key: str, value: str | None, *, value_base64: bool = False) -> tuple[str, bytes]:
    """Path and body of an etcd v3 JSON-gateway request (keys and values are base64).

    With value_base64 the value is already base64: raw bytes, such as a Secret as the
    kube-apiserver stores it.
    """
    if action == "put":
        encoded = (value or "") if value_base64 else b64(value or "")
        return "/v3/kv/put", json.dumps({"key": b64(key), "value": encoded}).encode()
    if action == "delete-prefix":
        # etcd's range end for "every key under this prefix": the prefix with its last byte raised.
        end = key[:-1] + chr(ord(key[-1]) + 1)
        return "/v3/kv/deleterange", json.dumps({"key": b64(key), "range_end": b64(end)}).encode()
    return "/v3/kv/range", json.dumps({"key": b64(key)}).encode()


def kv_values(body: str) -> list[str]:
    """Decoded values of a /v3/kv/range answer."""
    kvs = json.loads(body).get("kvs", [])
    return [base64.b64decode(kv.get("value", "")).decode("utf-8", "replace") for kv in kvs]


@dataclass
class WriteWatch:
    """How writes fared while something (a rolling restart) went on."""

    attempts: int = 0
    failed: int = 0
    longest_outage_seconds: float = 0.0
    errors: list[str] | None = None
    # The slowest single write attempt, served or not: the longest stall a client saw.
    longest_write_seconds: float = 0.0
    # With distinct keys: writes etcd acknowledged, and those of them not found when read back.
    acknowledged: int | None = None
    lost: int | None = None


def watch_writes(
    endpoints: list[str],
    ctx: ssl.SSLContext,
    *,
    stop_file: str,
    max_seconds: float,
    interval: float = 0.2,
    timeout: float = 2.0,
    one_connection: bool = False,
    distinct_keys: bool = False,
) -> WriteWatch:
    """Write a key every `interval` until `stop_file` exists, as an apiserver would.

    With `distinct_keys`, each attempt writes a key of its own under one prefix, and at the end
    every key etcd acknowledged is looked for (one linearizable read of the prefix): an
    acknowledged write that is not there was lost. The keys are deleted afterwards.

    Each attempt tries the endpoints in turn (like an etcd client with several endpoints) and
    fails only when none accepts the write. With `one_connection`, every write goes over one TLS
    connection to the first endpoint that is never re-opened: once it is cut, every later write
    fails. The longest outage is the time from the first failed attempt to the next success.
    """
    watch = WriteWatch(errors=[])
    prefix = f"/probe/watch-writes/{time.time_ns()}/"
    acknowledged: list[str] = []
    held = _HeldConnection(endpoints[0], ctx, timeout) if one_connection else None
    deadline = time.monotonic() + max_seconds
    outage_started: float | None = None
    try:
        while time.monotonic() < deadline and not Path(stop_file).exists():
            watch.attempts += 1
            key = f"{prefix}{watch.attempts:08d}" if distinct_keys else "/probe/watch-writes"
            path, body = kv_request("put", key, str(watch.attempts))
            began = time.monotonic()
            if held is not None:
                outcomes = [held.post(path, body)]
            else:
                outcomes = [request(e.rstrip("/") + path, ctx, "POST", body, timeout) for e in endpoints]
            now = time.monotonic()
            watch.longest_write_seconds = max(watch.longest_write_seconds, round(now - began, 3))
            if any(o.served for o in outcomes):
                acknowledged.append(key)
                if outage_started is not None:
                    watch.longest_outage_seconds = max(
                        watch.longest_outage_seconds, round(now - outage_started, 2)
                    )
                    outage_started = None
            else:
                watch.failed += 1
                outage_started = outage_started if outage_started is not None else now
                if watch.errors is not None and len(watch.errors) < 5:
                    watch.errors.append("; ".join(str(o.error or o.status) for o in outcomes))
            time.sleep(interval)
    finally:
        if held is not None:
            held.close()
    if outage_started is not None:
        watch.longest_outage_seconds = max(
            watch.longest_outage_seconds, round(time.monotonic() - outage_started, 2)
        )
    if distinct_keys:
        tally_lost(watch, acknowledged, endpoints, ctx=ctx, prefix=prefix, timeout=timeout)
    return watch


def tally_lost(
    watch: WriteWatch,
    acknowledged: list[str],
    endpoints: list[str],
    *,
    ctx: ssl.SSLContext,
    prefix: str,
    timeout: float,
) -> None:
    """Count the acknowledged writes not found under `prefix`, then delete the prefix."""
    watch.acknowledged = len(acknowledged)
    found = read_keys_under(endpoints, ctx, prefix, timeout)
    # Nothing read back is not "nothing lost": the count stays unknown (None) and the run fails.
    watch.lost = None if found is None else len(set(acknowledged) - found)
    path, body = kv_request("delete-prefix", prefix, None)
    for endpoint in endpoints:
        if request(endpoint.rstrip("/") + path, ctx, "POST", body, timeout).served:
            break


def read_keys_under(
    endpoints: list[str], ctx: ssl.SSLContext, prefix: str, timeout: float
) -> set[str] | None:
    """Every key under `prefix` (one linearizable read, from the first endpoint that answers)."""
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    body = json.dumps({"key": b64(prefix), "range_end": b64(end), "keys_only": True}).encode()
    for endpoint in endpoints:
        answer = request(endpoint.rstrip("/") + "/v3/kv/range", ctx, "POST", body, timeout)
        if answer.served and answer.status == 200:
            kvs = json.loads(answer.body).get("kvs", [])
            return {base64.b64decode(kv["key"]).decode() for kv in kvs}
    return None


@dataclass
class Latency:
    """Latency of one kind of request, over one keep-alive connection, one request at a time."""

    operation: str
    count: int
    failed: int
    p50_ms: float
    p99_ms: float
    max_ms: float


def percentile(samples: list[float], fraction: float) -> float:
    """Nearest-rank percentile: the smallest sample that at least `fraction` of all samples do not exceed."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


def measure_latency(
    endpoint: str, ctx: ssl.SSLContext, *, count: int, value_size: int, timeout: float = 5.0
) -> list[Latency]:
    """Put `count` keys, then read each back (a linearizable range), timing every request.

    One connection is opened first and kept (as an apiserver keeps its connections), so the
    figures are of requests, not of handshakes; the keys are deleted afterwards.
    """
    prefix = "/probe/latency/"
    value = "v" * value_size
    held = _HeldConnection(endpoint, ctx, timeout)
    results: list[Latency] = []
    try:
        # Each kind of request as the report names it, the kv action that makes it, and its value.
        for operation, action, payload in (("put", "put", value), ("range", "get", None)):
            samples: list[float] = []
            failed = 0
            for i in range(count):
                path, body = kv_request(action, f"{prefix}{i:08d}", payload)
                started = time.perf_counter()
                outcome = held.post(path, body)
                samples.append((time.perf_counter() - started) * 1000.0)
                failed += 0 if outcome.served else 1
            results.append(
                Latency(
                    operation=operation,
                    count=count,
                    failed=failed,
                    p50_ms=round(percentile(samples, 0.50), 3),
                    p99_ms=round(percentile(samples, 0.99), 3),
                    max_ms=round(max(samples), 3),
                )
            )
        held.post(*kv_request("delete-prefix", prefix, None))
    finally:
        held.close()
    return results


class _HeldConnection:
    """One keep-alive HTTP(S) connection that is never silently re-opened."""

    def __init__(self, endpoint: str, ctx: ssl.SSLContext, timeout: float) -> None:
        parts = urlsplit(endpoint)
        self._conn: http.client.HTTPConnection
        if parts.scheme == "http":
            # Only the benchmark's plain baseline cluster speaks plain HTTP.
            self._conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=timeout)
        else:
            self._conn = http.client.HTTPSConnection(
                parts.hostname or "", parts.port or 443, context=ctx, timeout=timeout
            )
        self._conn.connect()
        # http.client re-connects on its own when a connection was closed; that would hide a cut.
        self._conn.auto_open = 0

    def post(self, path: str, body: bytes) -> Outcome:
        try:
            self._conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            response = self._conn.getresponse()
            text = response.read().decode("utf-8", "replace")
            return Outcome(served=200 <= response.status < 300, status=response.status, body=text)
        except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
            return Outcome(served=False, error=f"{type(exc).__name__}: {exc}")

    def close(self) -> None:
        self._conn.close()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    tls = argparse.ArgumentParser(add_help=False)
    tls.add_argument("--cacert", help="CA bundle that must have signed the server's certificate")
    tls.add_argument("--cert", help="client certificate to present")
    tls.add_argument("--key", help="client private key")
    tls.add_argument("--tls-version", choices=sorted(TLS_VERSIONS), help="offer only this TLS version")
    tls.add_argument("--ciphers", help="offer only these TLS 1.2 cipher suites (OpenSSL names)")
    tls.add_argument("--timeout", type=float, default=5.0)
    tls.add_argument(
        "--no-verify", action="store_true", help="do not check the server, as an attacker would not"
    )

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    req = sub.add_parser("request", parents=[tls], help="one HTTP(S) request")
    req.add_argument("url")
    req.add_argument("--method", default="GET")
    req.add_argument("--data", help="request body")
    kv = sub.add_parser("kv", parents=[tls], help="put, get or delete keys through the v3 JSON gateway")
    kv.add_argument("action", choices=("put", "get", "delete-prefix"))
    # Its own dest: "key" is the TLS client key's (--key), which argparse would let overwrite it.
    kv.add_argument("etcd_key", metavar="key", help="the etcd key")
    kv.add_argument("value", nargs="?")
    kv.add_argument("--value-base64", action="store_true", help="the value is base64 of raw bytes")
    kv.add_argument("--endpoint", required=True, help="e.g. https://10.0.0.1:2379")
    watch = sub.add_parser("watch-writes", parents=[tls], help="keep writing until told to stop")
    watch.add_argument("--endpoints", required=True, help="comma-separated client URLs")
    watch.add_argument("--stop-file", required=True, help="stop once this file exists")
    watch.add_argument("--max-seconds", type=float, default=600.0)
    watch.add_argument("--interval", type=float, default=0.2)
    watch.add_argument(
        "--one-connection", action="store_true", help="all writes over one connection, never re-opened"
    )
    watch.add_argument(
        "--distinct-keys",
        action="store_true",
        help="a key per write, each acknowledged one read back at the end",
    )
    latency = sub.add_parser("latency", parents=[tls], help="p50/p99 of puts and reads, one at a time")
    latency.add_argument("--endpoint", required=True, help="e.g. https://10.0.0.1:2379")
    latency.add_argument("--count", type=int, default=1000, help="requests of each kind")
    latency.add_argument("--value-size", type=int, default=256, help="bytes per value")
    tcp = sub.add_parser("tcp", help="open a TCP connection, nothing more")
    tcp.add_argument("host")
    tcp.add_argument("port", type=int)
    tcp.add_argument("--timeout", type=float, default=3.0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "tcp":
        outcome = tcp_connect(args.host, args.port, args.timeout)
    else:
        try:
            ctx = build_context(
                args.cacert,
                cert=args.cert,
                key=args.key,
                tls_version=args.tls_version,
                ciphers=args.ciphers,
                verify=not args.no_verify,
            )
        except (OSError, ssl.SSLError) as exc:
            print(Outcome(served=False, error=f"local: {type(exc).__name__}: {exc}").to_json())
            return 2
        if args.command == "watch-writes":
            watch = watch_writes(
                args.endpoints.split(","),
                ctx,
                stop_file=args.stop_file,
                max_seconds=args.max_seconds,
                interval=args.interval,
                one_connection=args.one_connection,
                distinct_keys=args.distinct_keys,
            )
            print(json.dumps(asdict(watch), sort_keys=True))
            lost_or_unknown = args.distinct_keys and watch.lost != 0
            return 0 if watch.failed == 0 and not lost_or_unknown else 1
        if args.command == "latency":
            try:
                runs = measure_latency(
                    args.endpoint, ctx, count=args.count, value_size=args.value_size, timeout=args.timeout
                )
            except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
                print(Outcome(served=False, error=f"{type(exc).__name__}: {exc}").to_json())
                return 1
            print(json.dumps([asdict(run) for run in runs], sort_keys=True))
            return 0 if not any(run.failed for run in runs) else 1
        if args.command == "request":
            data = args.data.encode() if args.data is not None else None
            outcome = request(args.url, ctx, args.method, data, args.timeout)
        else:
            path, body = kv_request(args.action, args.etcd_key, args.value, value_base64=args.value_base64)
            outcome = request(args.endpoint.rstrip("/") + path, ctx, "POST", body, args.timeout)
            if outcome.served and args.action == "get":
                outcome.body = json.dumps(kv_values(outcome.body))
    print(outcome.to_json())
    return 0 if outcome.served else 1


if __name__ == "__main__":
    sys.exit(main())
