#!/usr/bin/python
"""Ansible module: read what a running etcd member shows of itself, in one pass."""

from __future__ import annotations

import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: etcd_member_read
short_description: Read a running etcd member's process, sockets, sandbox, storage, health and members at once
description:
  - One module run instead of one remote task per question, so that the summary a run ends with costs
    one round trip per member. Reads only; changes nothing; judges nothing (the role's Jinja and
    filters judge what it returns).
  - Every question is answered independently: one that cannot be answered (etcd not running, no
    AppArmor in the kernel, a member that does not answer) leaves its own field empty, never the others.
options:
  unit:
    description: The systemd unit of etcd.
    type: str
    default: etcd.service
  data_dir:
    description: etcd's data directory; the filesystem it is on is described.
    type: path
    required: true
  health_url:
    description: The member's /health URL, asked over mTLS.
    type: str
    required: true
  ca:
    description: The CA certificate the member's server certificate must chain to.
    type: path
    required: true
  cert:
    description: The client certificate to present.
    type: path
    required: true
  key:
    description: The client certificate's private key (read by the TLS library, never returned).
    type: path
    required: true
  members_argv:
    description: The etcdctl command that lists the cluster's members as JSON.
    type: list
    elements: str
    required: true
  timeout:
    description: Seconds to wait for each network answer.
    type: int
    default: 5
"""

RETURN = r"""
pid:
  description: etcd's main PID, 0 when it is not running.
  type: int
  returned: always
cmdline:
  description: The running etcd's command line, one argument per item; empty when it is not running.
  type: list
  returned: always
listeners:
  description: The local addresses of the TCP sockets the running etcd listens on, as ss prints them, sorted.
  type: list
  returned: always
apparmor:
  description: The running etcd's AppArmor label; null when the kernel has no AppArmor or etcd is not running.
  type: str
  returned: always
sandbox:
  description: What systemd-analyze security printed for the unit.
  type: str
  returned: always
storage:
  description: The data directory's filesystem type, its source, and the source's device type (- for none).
  type: list
  returned: always
health:
  description: The body of the member's /health answer ('' when it did not answer), and the error if any.
  type: dict
  returned: always
members:
  description: The rc, stdout and stderr of the member list command.
  type: dict
  returned: always
"""


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a read-only command; a missing program is an rc of 127, as from a shell."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    except FileNotFoundError as error:
        return subprocess.CompletedProcess(argv, 127, "", str(error))


def main_pid(unit: str) -> int:
    shown = run(["systemctl", "show", "-p", "MainPID", "--value", unit])
    value = shown.stdout.strip()
    return int(value) if shown.returncode == 0 and value.isdigit() else 0


def read_text(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def command_line(pid: int) -> list[str]:
    raw = read_text(Path(f"/proc/{pid}/cmdline")) if pid else None
    return [arg for arg in (raw or "").split("\0") if arg]


def listeners(pid: int) -> list[str]:
    """Local addresses of the process's listening TCP sockets, from ss (which names each socket's process)."""
    if not pid:
        return []
    listed = run(["ss", "-Hltnp"])
    owner = f"pid={pid},"
    return sorted(
        {line.split()[3] for line in listed.stdout.splitlines() if owner in line and len(line.split()) > 3}
    )


def apparmor_label(pid: int) -> str | None:
    label = read_text(Path(f"/proc/{pid}/attr/apparmor/current")) if pid else None
    return label.strip() if label is not None else None


def storage(data_dir: str) -> list[str]:
    """FSTYPE SOURCE TYPE: lsblk's TYPE is "crypt" for dm-crypt; an LVM volume is under /dev/mapper/ too."""
    found = run(["findmnt", "--noheadings", "--output", "FSTYPE,SOURCE", "--target", data_dir])
    fields = (found.stdout.splitlines()[:1] or [""])[0].split()
    fstype, source = [*fields, "-", "-"][:2]
    kind = run(["lsblk", "--noheadings", "--nodeps", "--output", "TYPE", source]) if source != "-" else None
    device_type = (
        kind.stdout.strip() if kind is not None and kind.returncode == 0 and kind.stdout.strip() else "-"
    )
    return [fstype, source, device_type]


def health(url: str, ca: str, cert: str, key: str, timeout: int) -> dict[str, str]:
    """GET /health over mTLS, validating the member's certificate and address against the CA."""
    try:
        context = ssl.create_default_context(cafile=ca)
        context.load_cert_chain(cert, key)
        # main() refuses any URL but https://, so urlopen speaks TLS here and nothing else.
        with urllib.request.urlopen(url, context=context, timeout=timeout) as answer:
            return {"content": answer.read(65536).decode(errors="replace"), "error": ""}
    except urllib.error.HTTPError as error:
        return {"content": error.read(65536).decode(errors="replace"), "error": str(error)}
    except (OSError, ssl.SSLError, ValueError) as error:
        return {"content": "", "error": str(error)}


def read_member(params: dict[str, Any]) -> dict[str, Any]:
    pid = main_pid(params["unit"])
    sandbox = run(["systemd-analyze", "security", "--no-pager", params["unit"]])
    members = run(params["members_argv"])
    return {
        "pid": pid,
        "cmdline": command_line(pid),
        "listeners": listeners(pid),
        "apparmor": apparmor_label(pid),
        "sandbox": sandbox.stdout,
        "storage": storage(params["data_dir"]),
        "health": health(
            params["health_url"], params["ca"], params["cert"], params["key"], params["timeout"]
        ),
        "members": {"rc": members.returncode, "stdout": members.stdout, "stderr": members.stderr[-2000:]},
    }


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "unit": {"type": "str", "default": "etcd.service"},
            "data_dir": {"type": "path", "required": True},
            "health_url": {"type": "str", "required": True},
            "ca": {"type": "path", "required": True},
            "cert": {"type": "path", "required": True},
            "key": {"type": "path", "required": True, "no_log": False},
            "members_argv": {"type": "list", "elements": "str", "required": True},
            "timeout": {"type": "int", "default": 5},
        },
        supports_check_mode=True,
    )
    if not module.params["health_url"].startswith("https://"):
        module.fail_json(msg=f"health_url must be https: {module.params['health_url']}")
    module.exit_json(changed=False, **read_member(module.params))


if __name__ == "__main__":
    main()
