#!/usr/bin/python
"""Ansible module: make one nftables table match an nft script, atomically and idempotently."""

from __future__ import annotations

import difflib
import re
import subprocess
from typing import Any

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: etcd_nft_table
short_description: Make one nftables table match an nft script, touching no other table
description:
  - Compares the live table (C(nft -s list table FAMILY NAME)) with what the script produces when loaded
    into an empty, throw-away network namespace, so formatting, element order and merged intervals never
    cause false changes and counters never cause false drift.
  - When they differ, loads the script with one C(nft -f) call: the script must replace the table in a
    single transaction (C(table F N), C(delete table F N), C(table F N { ... })), so no packet sees a
    half-built table.
  - Supports check mode and diff mode; the diff is between the live and the wanted listing.
options:
  family:
    description: The table's address family.
    type: str
    default: inet
  name:
    description: The table's name.
    type: str
    required: true
  script:
    description: The nft script that defines the table; required when I(state=present).
    type: str
  state:
    description: C(present) loads the script; C(absent) deletes the table.
    type: str
    choices: [present, absent]
    default: present
"""

RETURN = r"""
live:
  description: The table's listing before the module ran; empty when it did not exist.
  returned: always
  type: str
wanted:
  description: The listing the script produces; empty when I(state=absent).
  returned: always
  type: str
"""

_NO_TABLE = re.compile(r"No such file or directory")


class NftError(Exception):
    """nft refused a script or a listing."""


def _run(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)


def list_table(nft: str, family: str, name: str, netns_prefix: list[str] | None = None) -> str:
    """The table's stateless listing, or "" when it does not exist."""
    result = _run([*(netns_prefix or []), nft, "--stateless", "list", "table", family, name])
    if result.returncode == 0:
        return normalise(result.stdout)
    if _NO_TABLE.search(result.stderr):
        return ""
    raise NftError(result.stderr.strip())


def wanted_listing(nft: str, unshare: str, family: str, name: str, script: str) -> str:
    """Load the script into a new, empty network namespace and list the table there."""
    shell = f'"$0" -f - && "$0" --stateless list table {family} {name}'
    result = _run([unshare, "--net", "--", "/bin/sh", "-c", shell, nft], stdin=script)
    if result.returncode != 0:
        raise NftError(result.stderr.strip())
    return normalise(result.stdout)


def normalise(listing: str) -> str:
    """Strip trailing blanks so that two listings of the same table compare equal."""
    return "\n".join(line.rstrip() for line in listing.strip().splitlines()) + "\n"


def unified_diff(before: str, after: str, label: str) -> str:
    """A unified diff of two listings, for messages."""
    return "".join(
        difflib.unified_diff(
            before.splitlines(keepends=True),
            after.splitlines(keepends=True),
            fromfile=f"{label} (live)",
            tofile=f"{label} (wanted)",
        )
    )


def run_module() -> None:
    module = AnsibleModule(
        argument_spec={
            "family": {"type": "str", "default": "inet"},
            "name": {"type": "str", "required": True},
            "script": {"type": "str"},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
        },
        required_if=[("state", "present", ["script"])],
        supports_check_mode=True,
    )
    family: str = module.params["family"]
    name: str = module.params["name"]
    script: str | None = module.params["script"]
    state: str = module.params["state"]
    label = f"table {family} {name}"
    nft = module.get_bin_path("nft")
    unshare = module.get_bin_path("unshare")
    result: dict[str, Any] = {"changed": False, "live": "", "wanted": ""}

    if nft is None:
        # Only possible in check mode on a host that has not had nftables installed yet.
        if module.check_mode and state == "present":
            module.warn("nft is not installed yet: the diff shows the script, not nft's listing of it")
            result.update(changed=True, wanted=script or "", diff={"before": "", "after": script or ""})
            module.exit_json(**result)
        module.fail_json(msg="nft is not installed: install the nftables package first", **result)
    assert nft is not None

    try:
        live = list_table(nft, family, name)
        wanted = ""
        if state == "present":
            if unshare is None:
                module.fail_json(msg="unshare (util-linux) is needed to compare the table", **result)
            assert unshare is not None and script is not None
            wanted = wanted_listing(nft, unshare, family, name, script)
    except NftError as error:
        module.fail_json(msg=f"nft refused {label}: {error}", **result)
    result.update(live=live, wanted=wanted)
    if live == wanted:
        module.exit_json(**result)

    result["changed"] = True
    result["diff"] = {"before": live, "after": wanted, "before_header": label, "after_header": label}
    if module.check_mode:
        module.exit_json(**result)

    if state == "present":
        applied = _run([nft, "-f", "-"], stdin=script)
    else:
        applied = _run([nft, "delete", "table", family, name])
    if applied.returncode != 0:
        module.fail_json(msg=f"nft could not load {label}: {applied.stderr.strip()}", **result)
    now = list_table(nft, family, name)
    if now != wanted:
        difference = unified_diff(now, wanted, label)
        module.fail_json(msg=f"{label} differs from the script after loading it:\n{difference}", **result)
    module.exit_json(**result)


if __name__ == "__main__":
    run_module()
