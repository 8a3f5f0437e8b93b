#!/usr/bin/env python3
"""Which Kubernetes Secrets in etcd are encrypted at rest, and under which provider and key.

Run it where an etcd client certificate is (a kube_control_plane host: the firewall lets no one
else reach etcd), with etcd_probe.py beside it:

    secrets_scan.py --endpoint https://10.0.0.1:2379 --cacert ca.crt --cert c.crt --key c.key
    secrets_scan.py ... --encryption-config /etc/kubernetes/encryption/encryption-config.yaml --decrypt
    secrets_scan.py ... --resource secrets --resource widgets.example.com --etcd-prefix /k8s --json
    secrets_scan.py ... --prefix /registry/secrets/kube-system/ --json   (a part of one resource)
    secrets_scan.py ... --everything --json     (every value the apiserver stores, by key)
    secrets_scan.py ... --encryption-config - --decrypt < config.json    (the config on stdin)

Where a resource is stored follows the apiserver: its --etcd-prefix, then the resource's path
(storage_path: a Deployment is <prefix>/deployments/, a custom resource <prefix>/<group>/<plural>/,
a Service <prefix>/services/specs/). Every prefix is read at one revision and the number of keys
read must equal what etcd counts there at that revision, or the scan fails: a scan that missed
keys is no evidence. Nothing read at all is not "clean" either (exit 1).

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
1 on any plaintext, stale, unknown or unopenable value, or when no value was read at all; 2 when
the scan cannot run or did not read every key under a prefix. With --everything only the counts
by provider and key are judged (most resources are stored unencrypted by design). No value and
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
from collections.abc import Iterable, Iterator
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


# --- where the apiserver stores a resource ---------------------------------------------------

# The kube-apiserver stores a resource of the core group or of a group compiled into it under its
# plural alone (<etcd-prefix>/deployments/<namespace>/<name>: no group in the path), and every other
# group's (custom resources, aggregated APIs' registrations) under <group>/<plural>. A few built-in
# registries chose other paths (pkg/registry/*/storage, set with their store's prefix).
BUILT_IN_GROUPS = frozenset({
    "", "admissionregistration.k8s.io", "apps", "authentication.k8s.io", "authorization.k8s.io",
    "autoscaling", "batch", "certificates.k8s.io", "coordination.k8s.io", "discovery.k8s.io",
    "events.k8s.io", "extensions", "flowcontrol.apiserver.k8s.io", "internal.apiserver.k8s.io",
    "networking.k8s.io", "node.k8s.io", "policy", "rbac.authorization.k8s.io", "resource.k8s.io",
    "scheduling.k8s.io", "storage.k8s.io", "storagemigration.k8s.io",
})  # fmt: skip
SPECIAL_PATHS = {
    ("", "services"): "services/specs",
    ("", "endpoints"): "services/endpoints",
    ("", "nodes"): "minions",
    ("", "replicationcontrollers"): "controllers",
    ("networking.k8s.io", "ingresses"): "ingress",
    ("extensions", "ingresses"): "ingress",
}


@dataclass(frozen=True)
class Resource:
    """A resource as an EncryptionConfiguration names it; read from a path, a built-in plural may
    belong to any built-in group (the path does not say which)."""

    plural: str
    groups: tuple[str, ...]

    @classmethod
    def named(cls, name: str) -> Resource:
        """secrets, secrets. (core), deployments.apps, widgets.example.com."""
        plural, _, group = name.partition(".")
        if not plural or plural == "*" or not plural.replace("-", "").isalnum():
            raise ScanError(f"{name}: name one resource (secrets, deployments.apps), not a wildcard")
        return cls(plural.lower(), (group.lower(),))

    def selectors(self) -> set[str]:
        """The names in an EncryptionConfiguration's `resources` that select this resource."""
        names = {"*.*"}
        for group in self.groups:
            names |= (
                {self.plural, f"{self.plural}.", "*."}
                if group == ""
                else {f"{self.plural}.{group}", f"*.{group}"}
            )
        return names


def store_root(etcd_prefix: str) -> str:
    """Every key the apiserver stores starts with this: it joins its --etcd-prefix as a path, so
    "registry", "/registry" and "/registry/" are all "/registry/" ("/" stays "/")."""
    return "/" + etcd_prefix.strip("/") + "/" if etcd_prefix.strip("/") else "/"


def storage_path(etcd_prefix: str, resource: Resource) -> str:
    """The etcd prefix under which the apiserver stores every object of the resource."""
    (group,) = resource.groups
    path = SPECIAL_PATHS.get((group, resource.plural))
    if path is None:
        path = resource.plural if group in BUILT_IN_GROUPS else f"{group}/{resource.plural}"
    return f"{store_root(etcd_prefix)}{path}/"


def resource_at(etcd_prefix: str, prefix: str) -> Resource | None:
    """The resource whose objects a prefix holds, or None for the apiserver's whole prefix."""
    root = store_root(etcd_prefix)
    if not prefix.startswith(root):
        raise ScanError(f"{prefix}: not under the apiserver's --etcd-prefix {root}")
    parts = [p for p in prefix[len(root) :].split("/") if p]
    if not parts:
        return None
    for (group, plural), path in SPECIAL_PATHS.items():
        if parts[: path.count("/") + 1] == path.split("/"):
            return Resource(plural, (group,))
    if "." in parts[0]:
        if len(parts) < 2:
            raise ScanError(f"{prefix}: name a resource of group {parts[0]} (<group>/<plural>/)")
        return Resource(parts[1], (parts[0],))
    return Resource(parts[0], tuple(sorted(BUILT_IN_GROUPS)))


def providers_for(document: dict[str, Any], resource: Resource) -> list[Provider]:
    """The providers for a resource, in order; the first entry that names it wins."""
    wanted = resource.selectors()
    for entry in document.get("resources", []):
        if wanted & set(entry.get("resources", [])):
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


def range_request(
    endpoint: str, ctx: ssl.SSLContext, query: dict[str, Any], timeout: float
) -> dict[str, Any]:
    body = json.dumps(query).encode()
    outcome = request(endpoint.rstrip("/") + "/v3/kv/range", ctx, "POST", body, timeout)
    if not outcome.served:
        raise ScanError(f"{endpoint}: {outcome.error or f'HTTP {outcome.status}: {outcome.body[:200]}'}")
    answer: dict[str, Any] = json.loads(outcome.body)
    return answer


@dataclass
class PrefixRead:
    """Every (key, value) under a prefix, a page at a time (a big cluster has many Secrets), all at
    the revision of the first page; once read, the count is checked against etcd's own."""

    endpoint: str
    ctx: ssl.SSLContext
    prefix: str
    timeout: float
    read: int = 0
    held: int | None = None  # what etcd counts under the prefix at that revision

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        start, end = self.prefix.encode(), prefix_end(self.prefix.encode())
        revision: int | None = None
        while True:
            query: dict[str, Any] = {"key": b64(start), "range_end": b64(end), "limit": PAGE_SIZE}
            if revision is not None:
                query["revision"] = revision
            answer = range_request(self.endpoint, self.ctx, query, self.timeout)
            revision = revision or int(answer["header"]["revision"])
            kvs = answer.get("kvs", [])
            for kv in kvs:
                self.read += 1
                yield base64.b64decode(kv["key"]), base64.b64decode(kv.get("value", ""))
            if not answer.get("more") or not kvs:
                break
            start = base64.b64decode(kvs[-1]["key"]) + b"\x00"
        counted = {
            "key": b64(self.prefix.encode()),
            "range_end": b64(end),
            "count_only": True,
            "revision": revision,
        }
        self.held = int(range_request(self.endpoint, self.ctx, counted, self.timeout).get("count", 0))
        if self.held != self.read:
            raise ScanError(
                f"{self.prefix}: read {self.read} keys, but etcd holds {self.held} there at revision"
                f" {revision}: the scan did not see every value, so it proves nothing"
            )


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


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
    read: dict[str, int] = field(default_factory=dict)  # prefix -> values read (all of etcd's there)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def clean(self) -> bool:
        """Nothing needs attention, and something was read: an empty scan proves nothing."""
        return not self.findings and self.total > 0

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
            "read": self.read,
            "clean": self.clean,
        }


def scan(
    values: dict[str, Iterable[tuple[bytes, bytes]]],
    config: dict[str, Any] | None,
    *,
    prove: bool,
    etcd_prefix: str = "/registry",
) -> Report:
    report = Report()
    for prefix, items in values.items():
        resource = resource_at(etcd_prefix, prefix)
        if resource is None and config:
            raise ScanError("--everything counts values by key; judging them needs --resource or --prefix")
        providers = providers_for(config, resource) if config and resource else []
        report.read[prefix] = 0
        writer = providers[0] if providers else None
        if writer:
            report.write_keys[prefix] = f"{writer.kind}/{writer.write_key}" if writer.keys else writer.kind
        by_name = {(p.kind, name): secret for p in providers for name, secret in p.keys}
        for etcd_key, value in items:
            stored = classify(value)
            key_text = etcd_key.decode(errors="replace")
            report.counts[(prefix, stored.state, stored.provider, stored.key_name)] += 1
            report.read[prefix] += 1
            if resource is None:
                continue  # the whole store: most resources are plain by design; only counted
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
    rows += [(p, "(nothing)", "-", "-", "0") for p, n in sorted(report.read.items()) if n == 0]
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
        lines.append(
            "no value under these prefixes: nothing was proved (is this where the apiserver stores them?)"
        )
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
        "--etcd-prefix", default="/registry", help="the apiserver's --etcd-prefix (default /registry)"
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument(
        "--resource", action="append", help="a resource to scan where the apiserver stores it (repeatable); "
        "secrets, deployments.apps, widgets.example.com; default secrets",
    )  # fmt: skip
    what.add_argument("--prefix", action="append", help="an etcd prefix under --etcd-prefix (repeatable)")
    what.add_argument(
        "--everything",
        action="store_true",
        help="every value under --etcd-prefix, counted by provider and key",
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


def prefixes_to_scan(args: argparse.Namespace) -> list[str]:
    if args.everything:
        return [store_root(args.etcd_prefix)]
    if args.prefix:
        return list(args.prefix)
    return [storage_path(args.etcd_prefix, Resource.named(name)) for name in args.resource or ["secrets"]]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        prefixes = prefixes_to_scan(args)
        config = load_document(args.encryption_config) if args.encryption_config else None
        ctx = build_context(args.cacert, cert=args.cert, key=args.key)
        values: dict[str, Iterable[tuple[bytes, bytes]]] = {
            p: PrefixRead(args.endpoint, ctx, p, args.timeout) for p in prefixes
        }
        report = scan(values, config, prove=args.decrypt, etcd_prefix=args.etcd_prefix)
    except ImportError as exc:
        print(f"secrets_scan: --decrypt needs python3-cryptography on this host ({exc})", file=sys.stderr)
        return 2
    except (ScanError, OSError, ssl.SSLError, KeyError, ValueError) as exc:
        print(f"secrets_scan: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_json(), indent=2, sort_keys=True) if args.json else table(report))
    return 0 if report.clean else 1


if __name__ == "__main__":
    sys.exit(main())
