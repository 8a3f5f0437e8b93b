#!/usr/bin/env python3
"""Which Kubernetes Secrets in etcd are encrypted at rest, and under which provider and key.

Run it where an etcd client certificate is (a kube_control_plane host: the firewall lets no one
else reach etcd), with etcd_probe.py beside it:

    secrets_scan.py --endpoint https://10.0.0.1:2379 --cacert ca.crt --cert c.crt --key c.key
    secrets_scan.py ... --encryption-config /etc/kubernetes/encryption/encryption-config.yaml --decrypt
    secrets_scan.py ... --prefix /registry/secrets/ --prefix /registry/configmaps/ --json
    secrets_scan.py ... --encryption-config - --decrypt < config.json    (the config on stdin)

It reads every value under each prefix over mTLS (etcd's JSON gateway) and sorts it:
- plaintext: a Kubernetes object as protobuf (`k8s\\0...`) or JSON: what the apiserver stores
  when it does not encrypt (provider identity);
- encrypted: the apiserver's envelope `k8s:enc:<provider>:<version>:<key name>:`;
- unknown: anything else (reported, never guessed at).
With --encryption-config (the apiserver's EncryptionConfiguration; JSON, or YAML when PyYAML is
there) a value encrypted under any key but the one the config writes with (the first key of the
first provider for that resource) is flagged as stale: a rotation that is not finished. With
--decrypt each aescbc, aesgcm and secretbox value is opened with the config's key and must hold a
Kubernetes object (this needs python3-cryptography); kms values cannot be opened without the KMS
and are counted as not proved, which is not a failure.

Exit status: 0 when every value is encrypted under the current key (and opens, with --decrypt);
1 on any plaintext, stale, unknown or unopenable value; 2 when the scan cannot run. No value and
no key is ever printed: the report names etcd keys, providers and key names only.
"""

from __future__ import annotations

import argparse
import base64
import json
import ssl
import struct
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from etcd_probe import build_context, request

ENVELOPE = b"k8s:enc:"
PROTOBUF_MAGIC = b"k8s\x00"
PAGE_SIZE = 200
# Providers whose values this scanner can open with a key from the EncryptionConfiguration.
LOCAL_PROVIDERS = ("aescbc", "aesgcm", "secretbox")


class ScanError(Exception):
    """The scan cannot run: bad input or etcd not reachable."""


@dataclass(frozen=True)
class Stored:
    """How one etcd value is stored."""

    state: str  # plaintext, encrypted or unknown
    provider: str = ""  # identity for plaintext
    key_name: str = ""
    payload: bytes = b""  # the ciphertext after the envelope; never reported


def classify(value: bytes) -> Stored:
    if value.startswith(ENVELOPE):
        fields = value[len(ENVELOPE) :].split(b":", 3)
        if len(fields) == 4:
            provider, version, name, payload = fields
            # kms v2 names its plugin where the others name a key; both are "the key" here.
            label = provider.decode(errors="replace")
            if version != b"v1":
                label += f"-{version.decode(errors='replace')}"
            return Stored("encrypted", label, name.decode(errors="replace"), payload)
        return Stored("unknown")
    if value.startswith(PROTOBUF_MAGIC) or value.lstrip().startswith(b"{"):
        return Stored("plaintext", "identity")
    return Stored("unknown")


# --- the EncryptionConfiguration ------------------------------------------------------------


@dataclass(frozen=True)
class Provider:
    kind: str  # aescbc, aesgcm, secretbox, kms, kms-v2, identity
    keys: tuple[tuple[str, bytes], ...] = ()  # (name, secret); kms: ((plugin name, b""),)

    @property
    def write_key(self) -> str:
        return self.keys[0][0] if self.keys else ""


def load_document(path: Path) -> dict[str, Any]:
    """The EncryptionConfiguration from a file, or from standard input for "-"."""
    text = sys.stdin.read() if str(path) == "-" else path.read_text()
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        try:
            import yaml  # only for YAML files: nodes may lack PyYAML
        except ImportError as exc:
            raise ScanError(f"{path} is YAML: install python3-yaml (PyYAML) to read it") from exc
        document = yaml.safe_load(text)
    if not isinstance(document, dict) or document.get("kind") != "EncryptionConfiguration":
        raise ScanError(f"{path} is not an EncryptionConfiguration")
    return document


def resource_of(prefix: str) -> str:
    """The resource an etcd prefix holds: /registry/secrets/ -> secrets."""
    parts = [p for p in prefix.split("/") if p]
    if len(parts) < 2 or parts[0] != "registry":
        raise ScanError(f"{prefix}: not a Kubernetes prefix (/registry/<resource>/)")
    return parts[1]


def providers_for(document: dict[str, Any], resource: str) -> list[Provider]:
    """The providers for a core resource, in order; the first entry that names it wins."""
    for entry in document.get("resources", []):
        names = entry.get("resources", [])
        if resource in names or f"{resource}." in names or "*." in names or "*.*" in names:
            return [parse_provider(p) for p in entry.get("providers", [])]
    return [Provider("identity")]  # no entry: the apiserver does not encrypt it


def parse_provider(spec: dict[str, Any]) -> Provider:
    (kind, settings), *_ = spec.items()
    settings = settings or {}
    if kind == "kms":
        label = "kms" if str(settings.get("apiVersion", "v1")) == "v1" else f"kms-{settings['apiVersion']}"
        return Provider(label, ((str(settings["name"]), b""),))
    keys = tuple((str(k["name"]), base64.b64decode(k["secret"])) for k in settings.get("keys", []))
    return Provider(kind, keys)


# --- opening values as the apiserver wrote them ---------------------------------------------


def looks_like_object(plain: bytes) -> bool:
    return plain.startswith(PROTOBUF_MAGIC) or plain.lstrip().startswith(b"{")


def opens(provider: str, secret: bytes | None, payload: bytes, etcd_key: bytes) -> bool:
    """Whether the value opens with this key to a Kubernetes object (CBC has no integrity check:
    a wrong key can "open" a value to noise, which is then no object)."""
    if secret is None:
        return False
    try:
        return looks_like_object(decrypt(provider, secret, payload, etcd_key))
    except ValueError:
        return False


def decrypt(provider: str, secret: bytes, payload: bytes, etcd_key: bytes) -> bytes:
    """Open one value; raises ValueError when it does not open."""
    if provider == "aescbc":
        from cryptography.hazmat.primitives import padding
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        if len(payload) < 32 or len(payload) % 16:
            raise ValueError("not a whole number of AES blocks")
        decryptor = Cipher(algorithms.AES(secret), modes.CBC(payload[:16])).decryptor()
        padded = decryptor.update(payload[16:]) + decryptor.finalize()
        unpadder = padding.PKCS7(128).unpadder()
        return unpadder.update(padded) + unpadder.finalize()
    if provider == "aesgcm":
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        try:
            # The apiserver binds each value to its etcd key (the authenticated data).
            return AESGCM(secret).decrypt(payload[:12], payload[12:], etcd_key)
        except InvalidTag as exc:
            raise ValueError("authentication failed") from exc
    if provider == "secretbox":
        return secretbox_open(secret, payload[:24], payload[24:])
    raise ValueError(f"{provider} cannot be opened here")


# NaCl's secretbox (XSalsa20 and Poly1305), which the `cryptography` package does not offer:
# XSalsa20 in plain Python (values are small), Poly1305 from `cryptography`.


def _salsa20_core(state: list[int], rounds: int = 20) -> list[int]:
    x = state[:]

    def quarter(a: int, b: int, c: int, d: int) -> None:
        def rotl(v: int, n: int) -> int:
            return ((v << n) | (v >> (32 - n))) & 0xFFFFFFFF

        x[b] ^= rotl((x[a] + x[d]) & 0xFFFFFFFF, 7)
        x[c] ^= rotl((x[b] + x[a]) & 0xFFFFFFFF, 9)
        x[d] ^= rotl((x[c] + x[b]) & 0xFFFFFFFF, 13)
        x[a] ^= rotl((x[d] + x[c]) & 0xFFFFFFFF, 18)

    columns_then_rows = (
        (0, 4, 8, 12), (5, 9, 13, 1), (10, 14, 2, 6), (15, 3, 7, 11),
        (0, 1, 2, 3), (5, 6, 7, 4), (10, 11, 8, 9), (15, 12, 13, 14),
    )  # fmt: skip
    for _ in range(rounds // 2):
        for indices in columns_then_rows:
            quarter(*indices)
    return x


_SIGMA = struct.unpack("<4I", b"expand 32-byte k")


def _salsa_state(key: bytes, sixteen: bytes) -> list[int]:
    k, n = struct.unpack("<8I", key), struct.unpack("<4I", sixteen)
    return [_SIGMA[0], *k[:4], _SIGMA[1], *n, _SIGMA[2], *k[4:], _SIGMA[3]]


def xsalsa20_stream(key: bytes, nonce: bytes, length: int) -> bytes:
    # HSalsa20 derives a subkey from the key and the nonce's first 16 bytes.
    mixed = _salsa20_core(_salsa_state(key, nonce[:16]))
    subkey = struct.pack("<8I", *(mixed[i] for i in (0, 5, 10, 15, 6, 7, 8, 9)))
    out = bytearray()
    counter = 0
    while len(out) < length:
        state = _salsa_state(subkey, nonce[16:24] + struct.pack("<Q", counter))
        block = _salsa20_core(state)
        out += struct.pack("<16I", *((a + b) & 0xFFFFFFFF for a, b in zip(block, state, strict=True)))
        counter += 1
    return bytes(out[:length])


def secretbox_open(key: bytes, nonce: bytes, boxed: bytes) -> bytes:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.poly1305 import Poly1305

    if len(key) != 32 or len(nonce) != 24 or len(boxed) < 16:
        raise ValueError("not a secretbox value")
    tag, ciphertext = boxed[:16], boxed[16:]
    stream = xsalsa20_stream(key, nonce, 32 + len(ciphertext))
    try:
        Poly1305.verify_tag(stream[:32], ciphertext, tag)
    except InvalidSignature as exc:
        raise ValueError("authentication failed") from exc
    return bytes(c ^ s for c, s in zip(ciphertext, stream[32:], strict=True))


# --- reading etcd -----------------------------------------------------------------------------


def prefix_end(prefix: bytes) -> bytes:
    """etcd's range end for "every key under prefix": the prefix with its last byte raised."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return b"\x00"
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


def read_prefix(
    endpoint: str, ctx: ssl.SSLContext, prefix: str, timeout: float
) -> Iterator[tuple[bytes, bytes]]:
    """Every (key, value) under prefix, a page at a time (a big cluster has many Secrets)."""
    start, end = prefix.encode(), prefix_end(prefix.encode())
    while True:
        body = json.dumps({
            "key": base64.b64encode(start).decode(),
            "range_end": base64.b64encode(end).decode(),
            "limit": PAGE_SIZE,
        }).encode()  # fmt: skip
        outcome = request(endpoint.rstrip("/") + "/v3/kv/range", ctx, "POST", body, timeout)
        if not outcome.served:
            raise ScanError(f"{endpoint}: {outcome.error or f'HTTP {outcome.status}: {outcome.body[:200]}'}")
        answer = json.loads(outcome.body)
        kvs = answer.get("kvs", [])
        for kv in kvs:
            yield base64.b64decode(kv["key"]), base64.b64decode(kv.get("value", ""))
        if not answer.get("more") or not kvs:
            return
        start = base64.b64decode(kvs[-1]["key"]) + b"\x00"


# --- the scan -------------------------------------------------------------------------------


@dataclass
class Finding:
    key: str
    problem: str  # plaintext, stale, unknown, does-not-open


@dataclass
class Report:
    # (prefix, state, provider, key name) -> how many values
    counts: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)
    findings: list[Finding] = field(default_factory=list)
    proved: int = 0
    not_proved: int = 0
    write_keys: dict[str, str] = field(default_factory=dict)  # prefix -> provider/key the config writes

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "counts": [
                {"prefix": p, "state": s, "provider": pr, "key": k, "count": n}
                for (p, s, pr, k), n in sorted(self.counts.items())
            ],
            "findings": [asdict(f) for f in self.findings],
            "decrypted": {"proved": self.proved, "not_proved": self.not_proved},
            "write_keys": self.write_keys,
            "clean": not self.findings,
        }


def scan(
    values: dict[str, Iterator[tuple[bytes, bytes]]],
    config: dict[str, Any] | None,
    *,
    prove: bool,
) -> Report:
    report = Report()
    for prefix, items in values.items():
        providers = providers_for(config, resource_of(prefix)) if config else []
        writer = providers[0] if providers else None
        if writer:
            report.write_keys[prefix] = f"{writer.kind}/{writer.write_key}" if writer.keys else writer.kind
        by_name = {(p.kind, name): secret for p in providers for name, secret in p.keys}
        for etcd_key, value in items:
            stored = classify(value)
            key_text = etcd_key.decode(errors="replace")
            report.counts[(prefix, stored.state, stored.provider, stored.key_name)] += 1
            if stored.state != "encrypted":
                report.findings.append(Finding(key_text, stored.state))
                continue
            if writer and (stored.provider, stored.key_name) != (writer.kind, writer.write_key):
                report.findings.append(Finding(key_text, "stale"))
            if not prove:
                continue
            if stored.provider not in LOCAL_PROVIDERS:
                report.not_proved += 1
                continue
            secret = by_name.get((stored.provider, stored.key_name))
            if opens(stored.provider, secret, stored.payload, etcd_key):
                report.proved += 1
            else:
                report.findings.append(Finding(key_text, "does-not-open"))
    return report


def table(report: Report) -> str:
    rows = [("PREFIX", "STATE", "PROVIDER", "KEY", "COUNT")]
    rows += [(p, s, pr or "-", k or "-", str(n)) for (p, s, pr, k), n in sorted(report.counts.items())]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    for prefix, writer in sorted(report.write_keys.items()):
        lines.append(f"the config writes {prefix} with {writer}")
    if report.proved or report.not_proved:
        lines.append(
            f"opened with the config's keys: {report.proved}; kms (not provable): {report.not_proved}"
        )
    problems = Counter(f.problem for f in report.findings)
    if problems:
        values = len({f.key for f in report.findings})
        lines.append(
            f"{values} of {report.total} values need attention: "
            + ", ".join(f"{n} {p}" for p, n in sorted(problems.items()))
        )
        lines += [f"  {f.problem}: {f.key}" for f in report.findings[:50]]
        if len(report.findings) > 50:
            lines.append(f"  ... and {len(report.findings) - 50} more (--json lists them all)")
    elif report.total == 0:
        lines.append("no value under these prefixes")
    else:
        lines.append(f"all {report.total} values are encrypted under the current key")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint", required=True, help="an etcd client URL, e.g. https://10.0.0.1:2379")
    parser.add_argument("--cacert", required=True, help="the etcd CA certificate")
    parser.add_argument("--cert", required=True, help="an etcd client certificate (the apiserver's)")
    parser.add_argument("--key", required=True, help="its private key")
    parser.add_argument(
        "--prefix", action="append", help="etcd prefix to scan (repeatable); default /registry/secrets/"
    )
    parser.add_argument(
        "--encryption-config",
        type=Path,
        help="the apiserver's EncryptionConfiguration; - reads standard input",
    )
    parser.add_argument("--decrypt", action="store_true", help="open each value with the config's keys")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    if args.decrypt and not args.encryption_config:
        parser.error("--decrypt needs --encryption-config (the keys)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    prefixes = args.prefix or ["/registry/secrets/"]
    try:
        config = load_document(args.encryption_config) if args.encryption_config else None
        ctx = build_context(args.cacert, cert=args.cert, key=args.key)
        values = {p: read_prefix(args.endpoint, ctx, p, args.timeout) for p in prefixes}
        report = scan(values, config, prove=args.decrypt)
    except ImportError as exc:
        print(f"secrets_scan: --decrypt needs python3-cryptography on this host ({exc})", file=sys.stderr)
        return 2
    except (ScanError, OSError, ssl.SSLError, KeyError, ValueError) as exc:
        print(f"secrets_scan: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_json(), indent=2, sort_keys=True) if args.json else table(report))
    return 1 if report.findings else 0


if __name__ == "__main__":
    sys.exit(main())
