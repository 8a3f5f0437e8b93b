"""Where a key rotation stands, read from the controller's key file and the hosts' configurations."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from ansible.errors import AnsibleFilterError

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "roles/kube_apiserver_etcd/filter_plugins"))
from kube_apiserver_etcd_rotation import kube_apiserver_etcd_key_names, kube_apiserver_etcd_rotation_phase

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
