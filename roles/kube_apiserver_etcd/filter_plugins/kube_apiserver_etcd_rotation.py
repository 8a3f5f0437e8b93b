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


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "kube_apiserver_etcd_rotation_phase": kube_apiserver_etcd_rotation_phase,
            "kube_apiserver_etcd_key_names": kube_apiserver_etcd_key_names,
        }
