"""The Secrets-at-rest scanner's judgement, on values made as the kube-apiserver makes them.

Reading etcd over mTLS is shown against the lab's real etcd (tests/integration/test_apiserver.py);
here the values come straight from tests/kube_envelope.py, an independent encryption.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import secrets_scan
from etcd_probe import Outcome

from kube_envelope import encrypt, secret_key, secret_object

KEYS = {"aescbc": os.urandom(32), "aesgcm": os.urandom(32), "secretbox": os.urandom(32)}


def config(*providers: dict[str, Any], resources: tuple[str, ...] = ("secrets",)) -> dict[str, Any]:
    return {
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "EncryptionConfiguration",
        "resources": [{"resources": list(resources), "providers": list(providers)}],
    }


def aes(kind: str, *names: str) -> dict[str, Any]:
    return {kind: {"keys": [{"name": n, "secret": base64.b64encode(KEYS[kind]).decode()} for n in names]}}


def values(*items: tuple[str, bytes]) -> dict[str, Iterator[tuple[bytes, bytes]]]:
    return {"/registry/secrets/": iter([(k.encode(), v) for k, v in items])}


def sealed(provider: str, key_name: str, name: str) -> tuple[str, bytes]:
    etcd_key = secret_key("default", name)
    return etcd_key, encrypt(provider, key_name, KEYS[provider], secret_object(name), etcd_key)


@pytest.mark.parametrize("provider", ["aescbc", "aesgcm", "secretbox"])
def test_each_local_provider_opens_what_the_apiserver_sealed(provider: str) -> None:
    etcd_key, value = sealed(provider, "k1", "db-password")
    stored = secrets_scan.classify(value)
    assert (stored.state, stored.provider, stored.key_name) == ("encrypted", provider, "k1")
    plain = secrets_scan.decrypt(provider, KEYS[provider], stored.payload, etcd_key.encode())
    assert plain == secret_object("db-password")


@pytest.mark.parametrize("provider", ["aescbc", "aesgcm", "secretbox"])
def test_a_wrong_key_does_not_open_a_value(provider: str) -> None:
    etcd_key, value = sealed(provider, "k1", "db-password")
    payload = secrets_scan.classify(value).payload
    assert secrets_scan.opens(provider, KEYS[provider], payload, etcd_key.encode())
    for _ in range(20):  # CBC has no integrity check: a wrong key at times unpads noise
        assert not secrets_scan.opens(provider, os.urandom(32), payload, etcd_key.encode())


def test_an_aesgcm_value_copied_to_another_key_does_not_open() -> None:
    """The apiserver binds aesgcm values to their etcd key: a copy under another name is refused."""
    _, value = sealed("aesgcm", "k1", "db-password")
    stored = secrets_scan.classify(value)
    with pytest.raises(ValueError, match="authentication"):
        secrets_scan.decrypt("aesgcm", KEYS["aesgcm"], stored.payload, secret_key("default", "mine").encode())


def test_secretbox_matches_nacl_on_long_values() -> None:
    """More than one XSalsa20 block, and a tampered byte refused (the Poly1305 tag)."""
    plain = secret_object("big", data="x" * 1000)
    value = encrypt("secretbox", "k1", KEYS["secretbox"], plain, "/registry/secrets/default/big")
    payload = secrets_scan.classify(value).payload
    assert secrets_scan.secretbox_open(KEYS["secretbox"], payload[:24], payload[24:]) == plain
    tampered = payload[:-1] + bytes([payload[-1] ^ 1])
    with pytest.raises(ValueError, match="authentication"):
        secrets_scan.secretbox_open(KEYS["secretbox"], tampered[:24], tampered[24:])


@pytest.mark.parametrize(
    ("value", "state", "provider"),
    [
        (b"k8s\x00\n\x0c\n\x02v1\x12\x06Secret", "plaintext", "identity"),
        (b'{"kind":"Secret","apiVersion":"v1"}', "plaintext", "identity"),
        (b"k8s:enc:kms:v2:vault:\x0a\x10abc", "encrypted", "kms-v2"),
        (b"k8s:enc:aescbc", "unknown", ""),
        (b"\x00\x01garbage", "unknown", ""),
    ],
)
def test_values_are_sorted_by_how_they_are_stored(value: bytes, state: str, provider: str) -> None:
    stored = secrets_scan.classify(value)
    assert (stored.state, stored.provider) == (state, provider)


def test_a_clean_store_under_the_current_key_is_clean() -> None:
    report = secrets_scan.scan(
        values(sealed("aescbc", "new", "a"), sealed("aescbc", "new", "b")),
        config(aes("aescbc", "new", "old"), {"identity": {}}),
        prove=True,
    )
    assert not report.findings and report.proved == 2
    assert report.write_keys == {"/registry/secrets/": "aescbc/new"}
    assert "all 2 values are encrypted under the current key" in secrets_scan.table(report)


def test_plaintext_stale_unknown_and_unopenable_values_are_each_found() -> None:
    other = os.urandom(32)
    forged = encrypt("aescbc", "new", other, secret_object("forged"), secret_key("default", "forged"))
    report = secrets_scan.scan(
        values(
            (secret_key("default", "plain"), secret_object("plain")),
            sealed("aescbc", "old", "stale"),
            (secret_key("default", "junk"), b"\x00junk"),
            (secret_key("default", "forged"), forged),
            sealed("aescbc", "new", "good"),
        ),
        config(aes("aescbc", "new", "old")),
        prove=True,
    )
    problems = {(f.key.rsplit("/", 1)[1], f.problem) for f in report.findings}
    assert problems == {("plain", "plaintext"), ("stale", "stale"), ("junk", "unknown"),
                        ("forged", "does-not-open")}  # fmt: skip
    assert report.proved == 2  # "stale" still opens with the old key the config keeps for reading


def test_without_a_config_only_plaintext_and_unknown_are_findings() -> None:
    report = secrets_scan.scan(
        values(sealed("secretbox", "any", "a"), (secret_key("default", "p"), secret_object("p"))),
        None,
        prove=False,
    )
    assert [f.problem for f in report.findings] == ["plaintext"]
    counts = report.to_json()["counts"]
    assert {(c["state"], c["provider"], c["key"], c["count"]) for c in counts} == {
        ("encrypted", "secretbox", "any", 1), ("plaintext", "identity", "", 1)
    }  # fmt: skip


def test_kms_values_are_counted_as_not_provable_not_as_failures() -> None:
    kms = {"kms": {"apiVersion": "v2", "name": "vault", "endpoint": "unix:///run/kms.sock"}}
    report = secrets_scan.scan(
        values((secret_key("default", "k"), b"k8s:enc:kms:v2:vault:\x0a\x10abc")), config(kms), prove=True
    )
    assert not report.findings and (report.proved, report.not_proved) == (0, 1)


def test_the_first_matching_resource_entry_decides() -> None:
    document = config(aes("aesgcm", "k1"), resources=("configmaps",))
    document["resources"].append({"resources": ["*."], "providers": [aes("secretbox", "sb")]})
    named = secrets_scan.Resource.named
    assert [p.kind for p in secrets_scan.providers_for(document, named("secrets"))] == ["secretbox"]
    assert [p.kind for p in secrets_scan.providers_for(document, named("configmaps"))] == ["aesgcm"]
    assert [p.kind for p in secrets_scan.providers_for(config(), named("events"))] == ["identity"]
    # "*." is the core group only: a Deployment is not under it.
    assert [p.kind for p in secrets_scan.providers_for(document, named("deployments.apps"))] == ["identity"]


def test_an_empty_prefix_is_no_evidence() -> None:
    report = secrets_scan.scan(values(), config(aes("aescbc", "k")), prove=True)
    assert not report.findings and not report.clean and report.to_json()["clean"] is False
    assert "nothing was proved" in secrets_scan.table(report)
    assert "/registry/secrets/  (nothing)" in secrets_scan.table(report)


@pytest.mark.parametrize(
    ("etcd_prefix", "resource", "path"),
    [
        ("/registry", "secrets", "/registry/secrets/"),
        ("/registry", "secrets.", "/registry/secrets/"),
        ("/registry", "deployments.apps", "/registry/deployments/"),
        ("/registry", "cronjobs.batch", "/registry/cronjobs/"),
        ("/registry", "widgets.example.com", "/registry/example.com/widgets/"),
        ("/registry", "customresourcedefinitions.apiextensions.k8s.io",
         "/registry/apiextensions.k8s.io/customresourcedefinitions/"),
        ("/registry", "services", "/registry/services/specs/"),
        ("/registry", "endpoints", "/registry/services/endpoints/"),
        ("/registry", "nodes", "/registry/minions/"),
        ("/registry", "ingresses.networking.k8s.io", "/registry/ingress/"),
        ("/k8s/cluster-a/", "secrets", "/k8s/cluster-a/secrets/"),
        ("registry", "configmaps", "/registry/configmaps/"),
    ],
)  # fmt: skip
def test_each_resource_is_scanned_where_the_apiserver_stores_it(
    etcd_prefix: str, resource: str, path: str
) -> None:
    named = secrets_scan.Resource.named(resource)
    assert secrets_scan.storage_path(etcd_prefix, named) == path
    # And back: the path's resource is the one the config selects.
    found = secrets_scan.resource_at(etcd_prefix, path + "some-namespace/")
    assert found is not None and named.selectors() <= found.selectors() | {"*.*"}
    assert resource.rstrip(".") in found.selectors()


@pytest.mark.parametrize("name", ["*.", "*.apps", "*.*", "", "../secrets"])
def test_a_wildcard_or_odd_resource_name_is_refused(name: str) -> None:
    with pytest.raises(secrets_scan.ScanError):
        secrets_scan.Resource.named(name)


def test_a_prefix_outside_the_apiservers_is_refused() -> None:
    with pytest.raises(secrets_scan.ScanError, match="not under the apiserver's --etcd-prefix /k8s"):
        secrets_scan.scan(values(), None, prove=False, etcd_prefix="/k8s")


def test_everything_counts_every_value_by_key_and_flags_none() -> None:
    found = {"/registry/": iter([
        (b"/registry/secrets/a/s", encrypt("secretbox", "old", KEYS["secretbox"], secret_object("s"),
                                           "/registry/secrets/a/s")),
        (b"/registry/example.com/widgets/a/w", b"k8s:enc:secretbox:v1:old:" + os.urandom(40)),
        (b"/registry/namespaces/a", secret_object("a")),
    ])}  # fmt: skip
    report = secrets_scan.scan(found, None, prove=False)
    assert report.clean and report.read == {"/registry/": 3}
    counts = {(c["provider"], c["key"]): c["count"] for c in report.to_json()["counts"]}
    assert counts == {("secretbox", "old"): 2, ("identity", ""): 1}
    with pytest.raises(secrets_scan.ScanError, match="needs --resource or --prefix"):
        secrets_scan.scan({"/registry/": iter([])}, config(aes("aescbc", "k")), prove=False)


class FakeEtcd:
    """etcd's JSON range API over a sorted dict, with a revision; `hide` drops keys from pages only
    (as a server, proxy or bug that answers pages short would)."""

    def __init__(self, kvs: dict[bytes, bytes], hide: int = 0) -> None:
        self.kvs, self.hide = dict(sorted(kvs.items())), hide
        self.revisions_asked: list[int | None] = []

    def __call__(self, url: str, ctx: object, method: str, body: bytes, timeout: float) -> Outcome:
        query = json.loads(body)
        self.revisions_asked.append(query.get("revision"))
        start, end = base64.b64decode(query["key"]), base64.b64decode(query["range_end"])
        inside = [k for k in self.kvs if start <= k < end]
        answer: dict[str, Any] = {"header": {"revision": "41"}}
        if query.get("count_only"):
            answer["count"] = str(len(inside))
        else:
            page = inside[: query["limit"]]
            shown = page[self.hide :]
            answer["kvs"] = [{"key": base64.b64encode(k).decode(),
                              "value": base64.b64encode(self.kvs[k]).decode()} for k in shown]  # fmt: skip
            answer["more"] = len(inside) > len(page)
        return Outcome(served=True, status=200, body=json.dumps(answer))


def test_every_page_is_read_at_the_first_pages_revision_and_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    kvs = {f"/registry/secrets/ns/s{i:04}".encode(): secret_object(f"s{i}") for i in range(450)}
    etcd = FakeEtcd(kvs)
    monkeypatch.setattr(secrets_scan, "request", etcd)
    read = secrets_scan.PrefixRead(
        "https://etcd:2379", ssl.create_default_context(), "/registry/secrets/", 5.0
    )
    assert len(list(read)) == 450 and (read.read, read.held) == (450, 450)
    assert etcd.revisions_asked == [None, 41, 41, 41]  # three pages, then the count, all at 41


def test_a_scan_that_missed_keys_proves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    kvs = {f"/registry/secrets/ns/s{i}".encode(): secret_object(f"s{i}") for i in range(5)}
    monkeypatch.setattr(secrets_scan, "request", FakeEtcd(kvs, hide=2))
    read = secrets_scan.PrefixRead(
        "https://etcd:2379", ssl.create_default_context(), "/registry/secrets/", 5.0
    )
    with pytest.raises(secrets_scan.ScanError, match="read 3 keys, but etcd holds 5 there at revision 41"):
        list(read)


def test_prefix_end_is_etcds() -> None:
    assert secrets_scan.prefix_end(b"/registry/secrets/") == b"/registry/secrets0"
    assert secrets_scan.prefix_end(b"a\xff") == b"b"


def test_a_missing_or_wrong_config_stops_the_scan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--endpoint", "https://127.0.0.1:1", "--cacert", "x", "--cert", "x", "--key", "x"]
    assert secrets_scan.main([*base, "--encryption-config", str(tmp_path / "none.yaml")]) == 2
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"kind": "Pod"}))
    assert secrets_scan.main([*base, "--encryption-config", str(wrong)]) == 2
    assert "is not an EncryptionConfiguration" in capsys.readouterr().err


def test_no_key_material_reaches_the_report() -> None:
    secret = KEYS["aescbc"]
    report = secrets_scan.scan(values(sealed("aescbc", "new", "a")), config(aes("aescbc", "new")), prove=True)
    printed = secrets_scan.table(report) + json.dumps(report.to_json())
    for form in (secret.hex(), base64.b64encode(secret).decode(), "hunter2"):
        assert form not in printed
