"""Filters that edit kubeadm's kube-apiserver static pod, YAML-aware, on the controller.

kube_apiserver_etcd_manifest(text, flags, volumes): the manifest with each flag set exactly once
(an existing `--name=...` is replaced where it stands, later copies removed, a new flag appended)
and each hostPath volume and its read-only mount present once. Everything else is kept. When the
manifest already says all of it, the text comes back unchanged, byte for byte, so a re-run is a
no-op whatever the file's formatting; otherwise it is written as kubeadm writes it (keys sorted,
two-space indents).

kube_apiserver_etcd_storage_prefix(manifests, resources): the one --etcd-prefix the apiservers
store their objects under (host -> manifest text), refusing what a scan of that prefix in these
members could not cover: a host without a readable manifest, apiservers that disagree, and an
--etcd-servers-overrides that sends an encrypted resource to other etcd servers.

kube_apiserver_etcd_version(text): the Kubernetes version of the manifest's image tag
("registry.k8s.io/kube-apiserver:v1.31.2" -> "1.31.2"), or "" when the tag names none.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import yaml
from ansible.errors import AnsibleFilterError

_VERSION_TAG = re.compile(r":v(\d+\.\d+\.\d+)")


def _container(pod: dict[str, Any]) -> dict[str, Any]:
    containers = (pod.get("spec") or {}).get("containers") or []
    for container in containers:
        if container.get("name") == "kube-apiserver":
            return dict(container)
    raise AnsibleFilterError("the manifest has no container named kube-apiserver: is it kubeadm's?")


def _with_flags(command: list[str], flags: dict[str, str]) -> list[str]:
    result: list[str] = []
    placed: set[str] = set()
    for argument in command:
        name = argument[2:].split("=", 1)[0] if argument.startswith("--") else None
        if name in flags:
            if name not in placed:
                result.append(f"--{name}={flags[name]}")
                placed.add(name)
            continue  # a later copy of a flag we set: the apiserver would take the last one
        result.append(argument)
    result += [f"--{name}={value}" for name, value in flags.items() if name not in placed]
    return result


def _with_named(items: list[dict[str, Any]], wanted: dict[str, Any]) -> list[dict[str, Any]]:
    kept = [item for item in items if item.get("name") != wanted["name"]]
    position = next((i for i, item in enumerate(items) if item.get("name") == wanted["name"]), len(kept))
    return [*kept[:position], wanted, *kept[position:]]


def kube_apiserver_etcd_manifest(text: str, flags: dict[str, str], volumes: list[dict[str, str]]) -> str:
    # Plain strings: Ansible hands in its own str subclasses, which PyYAML's safe dumper refuses.
    flags = {str(name): str(value) for name, value in flags.items()}
    volumes = [{"name": str(v["name"]), "path": str(v["path"])} for v in volumes]
    try:
        pod = yaml.safe_load(str(text))
    except yaml.YAMLError as exc:
        raise AnsibleFilterError(f"the kube-apiserver manifest is not valid YAML: {exc}") from exc
    if not isinstance(pod, dict) or pod.get("kind") != "Pod":
        raise AnsibleFilterError("the kube-apiserver manifest is not a Pod")
    wanted = copy.deepcopy(pod)
    container = _container(wanted)
    container["command"] = _with_flags(list(container.get("command") or []), flags)
    mounts = list(container.get("volumeMounts") or [])
    host_volumes = list(wanted["spec"].get("volumes") or [])
    for volume in volumes:
        mounts = _with_named(mounts, {"mountPath": volume["path"], "name": volume["name"], "readOnly": True})
        host_volumes = _with_named(
            host_volumes,
            {"hostPath": {"path": volume["path"], "type": "DirectoryOrCreate"}, "name": volume["name"]},
        )
    container["volumeMounts"] = mounts
    wanted["spec"]["containers"] = [
        container if c.get("name") == "kube-apiserver" else c for c in wanted["spec"]["containers"]
    ]
    wanted["spec"]["volumes"] = host_volumes
    if wanted == pod:
        return text
    return str(yaml.safe_dump(wanted, default_flow_style=False, sort_keys=True))


def kube_apiserver_etcd_version(text: str) -> str:
    try:
        pod = yaml.safe_load(text)
        image = str(_container(pod).get("image", ""))
    except (yaml.YAMLError, AnsibleFilterError, AttributeError):
        return ""
    found = _VERSION_TAG.search(image)
    return found.group(1) if found else ""


def kube_apiserver_etcd_flag(text: str, name: str) -> str:
    """The value of one of the apiserver's flags in its manifest (the last one wins), or ""."""
    try:
        command = [str(a) for a in _container(yaml.safe_load(text) or {}).get("command") or []]
    except (yaml.YAMLError, AnsibleFilterError, AttributeError):
        return ""
    values = [a.split("=", 1)[1] for a in command if a.startswith(f"--{name}=")]
    return values[-1] if values else ""


def _override_selects(override: str, resource: str) -> bool:
    """Whether "group/resource#servers" (core: "/resource#...") is a resource the config names
    ("secrets", "secrets.", "deployments.apps", "*.", "*.apps", "*.*")."""
    group, _, plural = override.split("#", 1)[0].partition("/")
    named_plural, _, named_group = resource.partition(".")
    return named_group in (group, "*") and named_plural in (plural, "*")


def kube_apiserver_etcd_storage_prefix(manifests: dict[str, str], resources: list[str]) -> str:
    prefixes: dict[str, list[str]] = {}
    for host, text in sorted(manifests.items()):
        if not text or not text.strip():
            raise AnsibleFilterError(
                f"{host}: the kube-apiserver manifest cannot be read, so where its apiserver stores objects"
                " (--etcd-prefix) is unknown; a scan elsewhere would prove nothing"
            )
        prefix = "/" + (kube_apiserver_etcd_flag(text, "etcd-prefix") or "/registry").strip("/")
        prefixes.setdefault(prefix, []).append(host)
        overrides = [o for o in kube_apiserver_etcd_flag(text, "etcd-servers-overrides").split(",") if o]
        elsewhere = sorted({str(r) for o in overrides for r in resources if _override_selects(o, str(r))})
        if elsewhere:
            raise AnsibleFilterError(
                f"{host}: --etcd-servers-overrides stores {', '.join(elsewhere)} in other etcd servers"
                " than these members; a scan here cannot see those values. Scan them there"
                " (scripts/secrets_scan.py) and rotate by hand, or remove the override."
            )
    if len(prefixes) != 1:
        said = "; ".join(f"{', '.join(hosts)}: {prefix}" for prefix, hosts in sorted(prefixes.items()))
        raise AnsibleFilterError(
            f"the apiservers disagree on --etcd-prefix ({said}): they are not one cluster's, or a manifest"
            " was edited by hand; make them agree first"
        )
    return next(iter(prefixes))


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "kube_apiserver_etcd_manifest": kube_apiserver_etcd_manifest,
            "kube_apiserver_etcd_version": kube_apiserver_etcd_version,
            "kube_apiserver_etcd_flag": kube_apiserver_etcd_flag,
            "kube_apiserver_etcd_storage_prefix": kube_apiserver_etcd_storage_prefix,
        }
