"""Filter kube_apiserver_etcd_rotation_phase: where a key rotation stands, read from the files.

The documented rotation has four phases, each finished on every apiserver before the next:
add (the new key, second: every apiserver can read it), promote (the new key first: it encrypts),
rewrite (every Secret rewritten, so none is left under the old key), drop (the old key removed).
The controller's key file and the hosts' EncryptionConfigurations say which phase a rotation is
in; a run cut short anywhere resumes where it stopped:

    controller [old]       hosts all [old]        -> add      (a new rotation starts)
    controller [old, new]  some host not so       -> add      (resume: the new key to every host)
    controller [old, new]  hosts all [old, new]   -> promote
    controller [new, old]  some host not so       -> promote  (resume)
    controller [new, old]  hosts all [new, old]   -> rewrite  (then drop, once no Secret is under old)

Which key is new: key names carry their creation time (<provider>-YYYYmmddTHHMMSSZ), so the newer
one sorts last. Anything else (hosts that disagree with a one-key controller file, more than two
keys) is not a rotation in progress: the filter says so instead of guessing.
"""

from __future__ import annotations

import hashlib
from typing import Any

import yaml
from ansible.errors import AnsibleFilterError


def kube_apiserver_etcd_rotation_phase(controller: list[str], hosts: dict[str, list[str]]) -> dict[str, Any]:
    differing = sorted(host for host, names in hosts.items() if names != controller)
    if len(controller) == 1:
        if differing:
            raise AnsibleFilterError(
                f"{', '.join(differing)} do not hold the controller's key {controller[0]}: run "
                "playbooks/site.yml (--tags encryption) to bring them in line before rotating"
            )
        return {"phase": "add", "old": controller[0], "new": ""}
    if len(controller) == 2:  # the old key and the new one
        first, second = controller
        promoted = first > second
        old, new = (second, first) if promoted else (first, second)
        if differing:
            return {"phase": "promote" if promoted else "add", "old": old, "new": new, "behind": differing}
        return {"phase": "rewrite" if promoted else "promote", "old": old, "new": new}
    raise AnsibleFilterError(
        f"the controller's key file holds {len(controller)} keys for the provider ({', '.join(controller)}): "
        "not a rotation this playbook started; finish it by hand (see the README)"
    )


def kube_apiserver_etcd_key_names(config_text: str, provider: str) -> list[str]:
    """The names of a provider's keys in an EncryptionConfiguration, in order (first resource entry)."""
    config = yaml.safe_load(config_text) or {}
    for spec in (config.get("resources") or [{}])[0].get("providers") or []:
        if provider in spec:
            return [str(key["name"]) for key in (spec[provider] or {}).get("keys", [])]
    return []


def _fingerprint(secret: object) -> str:
    """A key's identity that can be shown and compared without the key: SHA-256 of it, shortened."""
    return hashlib.sha256(str(secret).encode()).hexdigest()[:16]


def kube_apiserver_etcd_live_keys(config_text: str, providers: list[str]) -> dict[str, list[list[str]]]:
    """Each listed provider's keys in a host's EncryptionConfiguration, in order: [[name, fingerprint]].

    Only names and fingerprints leave this filter, so the result may be compared and shown.
    """
    try:
        config = yaml.safe_load(config_text) or {}
    except yaml.YAMLError as error:
        raise AnsibleFilterError(f"the EncryptionConfiguration is not YAML: {error}") from None
    found: dict[str, list[list[str]]] = {}
    for resource in config.get("resources") or []:
        for spec in resource.get("providers") or []:
            for provider in providers:
                for key in (spec.get(provider) or {}).get("keys", []) if provider in spec else []:
                    entry = [str(key.get("name")), _fingerprint(key.get("secret"))]
                    if entry not in found.setdefault(provider, []):
                        found[provider].append(entry)
    return found


def _describe(keys: list[list[str]]) -> str:
    return ", ".join(f"{name} (sha256 {fingerprint})" for name, fingerprint in keys) or "none"


def kube_apiserver_etcd_key_differences(
    controller: dict[str, list[dict[str, Any]]], hosts: dict[str, dict[str, list[list[str]]]]
) -> list[str]:
    """Each host whose live keys the controller's key file does not hold, as one line per provider.

    A host may lack keys the controller has (a new host, or a phase that saved the controller's file
    first). It may hold keys after the controller's own only where the controller's list leads its
    list: the state a key rotation's last phase (drop) leaves when it is cut short after saving the
    controller's file, which it does only once no Secret is left under the dropped key. Any other
    key on a host that the controller lacks would be gone from the host after the run, and every
    Secret encrypted with it unreadable.
    """
    differences = []
    for host, live in sorted(hosts.items()):
        for provider, keys in sorted(live.items()):
            wanted = [[str(k["name"]), _fingerprint(k["secret"])] for k in controller.get(provider) or []]
            if all(key in wanted for key in keys) or (wanted and keys[: len(wanted)] == wanted):
                continue
            differences.append(
                f"{host} uses {provider} keys {_describe(keys)}, and the controller's key file holds"
                f" {_describe(wanted)}"
            )
    return differences


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "kube_apiserver_etcd_rotation_phase": kube_apiserver_etcd_rotation_phase,
            "kube_apiserver_etcd_key_names": kube_apiserver_etcd_key_names,
            "kube_apiserver_etcd_live_keys": kube_apiserver_etcd_live_keys,
            "kube_apiserver_etcd_key_differences": kube_apiserver_etcd_key_differences,
        }
