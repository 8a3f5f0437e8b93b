"""kube_apiserver_etcd's edit of kubeadm's static pod: flags once, everything else kept, idempotent.

The manifest is the lab's stand-in for what `kubeadm init` writes (roles/lab_control_plane).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml
from ansible.errors import AnsibleFilterError

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "roles/kube_apiserver_etcd/filter_plugins"))
from kube_apiserver_etcd_manifest import (
    kube_apiserver_etcd_manifest,
    kube_apiserver_etcd_storage_prefix,
    kube_apiserver_etcd_version,
)

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "roles/lab_control_plane/templates/etc/kubernetes/manifests/kube-apiserver.yaml.j2"
FLAGS = {
    "etcd-servers": "https://10.0.0.1:2379,https://10.0.0.2:2379,https://10.0.0.3:2379",
    "etcd-cafile": "/etc/kubernetes/pki/etcd/ca.crt",
    "etcd-certfile": "/etc/kubernetes/pki/apiserver-etcd-client.crt",
    "etcd-keyfile": "/etc/kubernetes/pki/apiserver-etcd-client.key",
    "encryption-provider-config": "/etc/kubernetes/encryption/encryption-config.yaml",
}
VOLUMES = [{"name": "etcd-encryption-config", "path": "/etc/kubernetes/encryption"}]


@pytest.fixture
def kubeadm_manifest() -> str:
    template = jinja2.Template(TEMPLATE.read_text(), keep_trailing_newline=True)
    return str(template.render(lab_podman_ipv4="10.0.0.21", lab_control_plane_kubernetes_version="v1.31.2"))


def container(text: str) -> dict[str, Any]:
    pod = yaml.safe_load(text)
    found: dict[str, Any] = pod["spec"]["containers"][0]
    return found


def test_each_flag_is_set_once_where_it_stood_and_the_rest_is_kept(kubeadm_manifest: str) -> None:
    edited = kube_apiserver_etcd_manifest(kubeadm_manifest, FLAGS, VOLUMES)
    before, after = container(kubeadm_manifest)["command"], container(edited)["command"]
    for name, value in FLAGS.items():
        assert [a for a in after if a.startswith(f"--{name}=")] == [f"--{name}={value}"], name
    # kubeadm's etcd-servers (stacked etcd on 127.0.0.1) is replaced in place, not appended.
    assert after.index(f"--etcd-servers={FLAGS['etcd-servers']}") == before.index(
        "--etcd-servers=https://127.0.0.1:2379"
    )
    untouched = [a for a in before if not any(a.startswith(f"--{n}=") for n in FLAGS)]
    assert [a for a in after if not any(a.startswith(f"--{n}=") for n in FLAGS)] == untouched
    # Everything but the command, the mounts and the volumes is exactly as kubeadm wrote it.
    pod_before, pod_after = yaml.safe_load(kubeadm_manifest), yaml.safe_load(edited)
    for pod in (pod_before, pod_after):
        pod["spec"]["containers"][0].pop("command"), pod["spec"]["containers"][0].pop("volumeMounts")
        pod["spec"].pop("volumes")
    assert pod_after == pod_before


def test_the_encryption_config_directory_is_mounted_read_only(kubeadm_manifest: str) -> None:
    edited = yaml.safe_load(kube_apiserver_etcd_manifest(kubeadm_manifest, FLAGS, VOLUMES))
    mounts = edited["spec"]["containers"][0]["volumeMounts"]
    volumes = edited["spec"]["volumes"]
    assert {
        "mountPath": "/etc/kubernetes/encryption",
        "name": "etcd-encryption-config",
        "readOnly": True,
    } in mounts
    assert {
        "hostPath": {"path": "/etc/kubernetes/encryption", "type": "DirectoryOrCreate"},
        "name": "etcd-encryption-config",
    } in volumes
    original = yaml.safe_load(kubeadm_manifest)
    assert len(mounts) == len(original["spec"]["containers"][0]["volumeMounts"]) + 1
    assert len(volumes) == len(original["spec"]["volumes"]) + 1


def test_a_second_edit_returns_the_text_unchanged_byte_for_byte(kubeadm_manifest: str) -> None:
    once = kube_apiserver_etcd_manifest(kubeadm_manifest, FLAGS, VOLUMES)
    assert once != kubeadm_manifest
    assert kube_apiserver_etcd_manifest(once, FLAGS, VOLUMES) is once
    # A manifest that already says it all, in any formatting, is left alone.
    reformatted = yaml.safe_dump(yaml.safe_load(once), indent=4, sort_keys=False)
    assert kube_apiserver_etcd_manifest(reformatted, FLAGS, VOLUMES) == reformatted


def test_repeated_flags_and_volumes_are_collapsed_to_one(kubeadm_manifest: str) -> None:
    pod = yaml.safe_load(kubeadm_manifest)
    pod["spec"]["containers"][0]["command"] += ["--etcd-servers=https://evil:2379", "--etcd-keyfile=/tmp/k"]
    pod["spec"]["volumes"].append({"hostPath": {"path": "/tmp"}, "name": "etcd-encryption-config"})
    edited = yaml.safe_load(kube_apiserver_etcd_manifest(yaml.safe_dump(pod), FLAGS, VOLUMES))
    command = edited["spec"]["containers"][0]["command"]
    assert sum(a.startswith("--etcd-servers=") for a in command) == 1
    assert "--etcd-keyfile=/tmp/k" not in command
    assert [v["name"] for v in edited["spec"]["volumes"]].count("etcd-encryption-config") == 1


def test_the_version_comes_from_the_image_tag(kubeadm_manifest: str) -> None:
    assert kube_apiserver_etcd_version(kubeadm_manifest) == "1.31.2"
    assert kube_apiserver_etcd_version(kubeadm_manifest.replace(":v1.31.2", ":latest")) == ""


@pytest.mark.parametrize(
    ("text", "message"),
    [("kind: Deployment\n", "not a Pod"), ("kind: Pod\nspec:\n  containers: []\n", "no container named"),
     ("a: [\n", "not valid YAML")],
)  # fmt: skip
def test_what_is_not_kubeadms_manifest_is_refused(text: str, message: str) -> None:
    with pytest.raises(AnsibleFilterError, match=message):
        kube_apiserver_etcd_manifest(text, FLAGS, VOLUMES)


def with_flags(kubeadm_manifest: str, **flags: str) -> str:
    return str(
        kube_apiserver_etcd_manifest(kubeadm_manifest, {k.replace("_", "-"): v for k, v in flags.items()}, [])
    )


def test_the_storage_prefix_is_the_apiservers_etcd_prefix(kubeadm_manifest: str) -> None:
    assert kube_apiserver_etcd_storage_prefix({"a": kubeadm_manifest}, ["secrets"]) == "/registry"
    custom = {"a": with_flags(kubeadm_manifest, etcd_prefix="k8s/one/"), "b": with_flags(
        kubeadm_manifest, etcd_prefix="/k8s/one")}  # fmt: skip
    assert kube_apiserver_etcd_storage_prefix(custom, ["secrets"]) == "/k8s/one"


def test_apiservers_that_disagree_on_the_prefix_are_refused(kubeadm_manifest: str) -> None:
    manifests = {"a": kubeadm_manifest, "b": with_flags(kubeadm_manifest, etcd_prefix="/other")}
    with pytest.raises(AnsibleFilterError, match=r"disagree on --etcd-prefix \(b: /other; a: /registry\)"):
        kube_apiserver_etcd_storage_prefix(manifests, ["secrets"])


def test_a_host_without_a_readable_manifest_is_refused(kubeadm_manifest: str) -> None:
    with pytest.raises(AnsibleFilterError, match="b: the kube-apiserver manifest cannot be read"):
        kube_apiserver_etcd_storage_prefix({"a": kubeadm_manifest, "b": ""}, ["secrets"])


@pytest.mark.parametrize(
    ("override", "resources", "refused"),
    [
        ("/secrets#https://10.9.9.9:2379", ["secrets"], True),
        ("/events#https://10.9.9.9:2379;https://10.9.9.8:2379", ["secrets"], False),
        ("apps/deployments#https://10.9.9.9:2379", ["deployments.apps"], True),
        ("apps/deployments#https://10.9.9.9:2379", ["*.apps"], True),
        ("/configmaps#https://10.9.9.9:2379", ["*."], True),
        ("/configmaps#https://10.9.9.9:2379", ["*.*"], True),
        ("/events#https://10.9.9.9:2379,/secrets#https://10.9.9.9:2379", ["secrets."], True),
    ],
)  # fmt: skip
def test_an_encrypted_resource_kept_in_other_etcd_servers_is_refused(
    kubeadm_manifest: str, override: str, resources: list[str], refused: bool
) -> None:
    manifests = {"a": with_flags(kubeadm_manifest, etcd_servers_overrides=override)}
    if not refused:
        assert kube_apiserver_etcd_storage_prefix(manifests, resources) == "/registry"
        return
    with pytest.raises(AnsibleFilterError, match="--etcd-servers-overrides stores"):
        kube_apiserver_etcd_storage_prefix(manifests, resources)
