"""Where a key rotation stands, read from the controller's key file and the hosts' configurations."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from ansible.errors import AnsibleFilterError

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "roles/kube_apiserver_etcd/filter_plugins"))
from kube_apiserver_etcd_manifest import kube_apiserver_etcd_flag
from kube_apiserver_etcd_rotation import (
    kube_apiserver_etcd_key_differences,
    kube_apiserver_etcd_key_names,
    kube_apiserver_etcd_live_keys,
    kube_apiserver_etcd_rotation_phase,
)

OLD, NEW = "secretbox-20261101T000000Z", "secretbox-20261125T101500Z"


@pytest.mark.parametrize(
    ("controller", "hosts", "phase"),
    [
        ([OLD], {"a": [OLD], "b": [OLD]}, "add"),  # a new rotation
        ([OLD, NEW], {"a": [OLD, NEW], "b": [OLD]}, "add"),  # cut short in phase 1: resume it
        ([OLD, NEW], {"a": [OLD, NEW], "b": [OLD, NEW]}, "promote"),
        ([NEW, OLD], {"a": [NEW, OLD], "b": [OLD, NEW]}, "promote"),  # cut short in phase 2
        ([NEW, OLD], {"a": [NEW, OLD], "b": [NEW, OLD]}, "rewrite"),
    ],
)
def test_the_phase_follows_from_the_files(
    controller: list[str], hosts: dict[str, list[str]], phase: str
) -> None:
    found = kube_apiserver_etcd_rotation_phase(controller, hosts)
    assert found["phase"] == phase
    if len(controller) == 2:
        assert (found["old"], found["new"]) == (OLD, NEW)


def test_a_resumed_phase_names_the_hosts_behind() -> None:
    found = kube_apiserver_etcd_rotation_phase([OLD, NEW], {"a": [OLD, NEW], "b": [OLD]})
    assert found["behind"] == ["b"]


def test_hosts_out_of_line_with_a_one_key_controller_file_are_not_rotated() -> None:
    with pytest.raises(AnsibleFilterError, match=r"b do not hold the controller's key .*site.yml"):
        kube_apiserver_etcd_rotation_phase([OLD], {"a": [OLD], "b": ["other"]})


def test_three_keys_are_not_a_rotation_this_playbook_started() -> None:
    with pytest.raises(AnsibleFilterError, match="holds 3 keys"):
        kube_apiserver_etcd_rotation_phase([OLD, NEW, "x"], {"a": [OLD, NEW, "x"]})


def test_key_names_are_read_in_order_for_one_provider() -> None:
    config = f"""
kind: EncryptionConfiguration
resources:
  - resources: [secrets]
    providers:
      - aescbc: {{keys: [{{name: cbc, secret: eA==}}]}}
      - secretbox: {{keys: [{{name: {NEW}, secret: eA==}}, {{name: {OLD}, secret: eA==}}]}}
      - identity: {{}}
"""
    assert kube_apiserver_etcd_key_names(config, "secretbox") == [NEW, OLD]
    assert kube_apiserver_etcd_key_names(config, "aesgcm") == []


# --- the controller's key file against the keys the apiservers use ---------------------------------

KEYS = {
    "old": "b2xkLWtleS0xMjM0NTY3ODkwMTIzNDU2Nzg5MDEyMzQ=",
    "new": "bmV3LWtleS0xMjM0NTY3ODkwMTIzNDU2Nzg5MDEyMzQ=",
}


def config(*names: str) -> str:
    keys = "".join(f"        - name: {n}\n          secret: {KEYS[n]}\n" for n in names)
    return (
        "kind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n"
        f"  - secretbox:\n      keys:\n{keys}  - identity: {{}}\n"
    )


def controller(*names: str) -> dict[str, list[dict[str, str]]]:
    return {"secretbox": [{"name": n, "secret": KEYS[n]} for n in names]}


def live(*names: str) -> dict[str, list[list[str]]]:
    found: dict[str, list[list[str]]] = kube_apiserver_etcd_live_keys(config(*names), ["secretbox", "aescbc"])
    return found


def test_the_live_keys_carry_names_and_fingerprints_never_the_keys() -> None:
    keys = live("new", "old")
    assert [name for name, _ in keys["secretbox"]] == ["new", "old"]
    assert all(KEYS["new"] not in str(v) and KEYS["old"] not in str(v) for v in keys.values())


@pytest.mark.parametrize(
    ("on_controller", "on_host", "refused"),
    [
        (("old",), ("old",), False),
        (("old", "new"), ("old",), False),  # the controller saved a new key first (rotation, phase add)
        (
            ("new",),
            ("new", "old"),
            False,
        ),  # a rotation's drop phase cut short after saving the controller's file
        (("new",), ("old",), True),  # an old or another cluster's key file
        (("old",), ("new", "old"), True),  # an old backup of the key file
        ((), ("old",), True),  # a key file without this provider
    ],
)
def test_a_host_key_the_controller_lacks_stops_the_run(
    on_controller: tuple[str, ...], on_host: tuple[str, ...], refused: bool
) -> None:
    differences = kube_apiserver_etcd_key_differences(controller(*on_controller), {"api-1": live(*on_host)})
    assert bool(differences) == refused, differences
    if refused:
        assert differences[0].startswith("api-1 uses secretbox keys "), differences


def test_the_same_name_with_another_secret_is_another_key() -> None:
    other = {"secretbox": [{"name": "old", "secret": KEYS["new"]}]}
    assert kube_apiserver_etcd_key_differences(other, {"api-1": live("old")})


def test_the_apiservers_flag_is_read_from_its_manifest() -> None:
    manifest = (
        "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - name: kube-apiserver\n    command:\n"
        "    - kube-apiserver\n    - --encryption-provider-config=/etc/kubernetes/enc/old.yaml\n"
    )
    assert kube_apiserver_etcd_flag(manifest, "encryption-provider-config") == "/etc/kubernetes/enc/old.yaml"
    assert kube_apiserver_etcd_flag(manifest, "etcd-servers") == ""
    assert kube_apiserver_etcd_flag("not: [a pod", "etcd-servers") == ""
