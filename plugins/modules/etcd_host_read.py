#!/usr/bin/python
"""Ansible module: a role's read-only questions to a host, answered in one module run."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path
from typing import Any

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: etcd_host_read
short_description: Run a role's read-only commands and read its files on a host, in one module run
description:
  - Does for a list of questions what C(ansible.builtin.command), C(ansible.builtin.stat) and
    C(ansible.builtin.slurp) do one at a time. A module run costs about 0.9 s per task on a 3-member lab
    even when it only reads, and most of a no-op run was such reads.
  - Reads only and changes nothing, so it runs in check mode too. It judges nothing (the role's Jinja does).
  - Each answer stands on its own. A command that fails or a file that is missing is reported in its
    own entry and never fails the module or hides the other answers.
  - Not for secrets unless the task has C(no_log), since file contents and command output are returned.
options:
  commands:
    description: >-
      Named commands, each a list of arguments (no shell unless the list starts one). Each answer has
      C(rc), C(stdout) and C(stderr); C(rc) is 127 when the program does not exist.
    type: dict
    default: {}
  files:
    description: >-
      Named paths whose text is read. Each answer has C(exists) and C(content) (null when the path is
      missing or is not a regular file).
    type: dict
    default: {}
  paths:
    description: >-
      Named paths to look at without reading them. Each answer has C(exists), and for an existing path
      C(isdir), C(isreg), C(mode) (an octal string), C(uid) and C(gid). Symbolic links are followed.
    type: dict
    default: {}
"""

RETURN = r"""
commands:
  description: For each named command, its C(rc), C(stdout) and C(stderr).
  returned: always
  type: dict
files:
  description: For each named file, C(exists) and C(content).
  returned: always
  type: dict
paths:
  description: For each named path, C(exists) and its type, mode and owner ids.
  returned: always
  type: dict
"""


def run_command(argv: list[str]) -> dict[str, Any]:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    except FileNotFoundError as missing:
        return {"rc": 127, "stdout": "", "stderr": str(missing)}
    return {"rc": done.returncode, "stdout": done.stdout, "stderr": done.stderr}


def read_file(path: str) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        return {"exists": file.exists(), "content": None}
    return {"exists": True, "content": file.read_text(errors="replace")}


def look_at(path: str) -> dict[str, Any]:
    try:
        st = Path(path).stat()
    except FileNotFoundError:
        return {"exists": False}
    return {
        "exists": True,
        "isdir": stat.S_ISDIR(st.st_mode),
        "isreg": stat.S_ISREG(st.st_mode),
        "mode": f"{stat.S_IMODE(st.st_mode):04o}",
        "uid": st.st_uid,
        "gid": st.st_gid,
    }


def read_host(commands: dict[str, list[str]], files: dict[str, str], paths: dict[str, str]) -> dict[str, Any]:
    return {
        "commands": {name: run_command([str(arg) for arg in argv]) for name, argv in commands.items()},
        "files": {name: read_file(path) for name, path in files.items()},
        "paths": {name: look_at(path) for name, path in paths.items()},
    }


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "commands": {"type": "dict", "default": {}},
            "files": {"type": "dict", "default": {}},
            "paths": {"type": "dict", "default": {}},
        },
        supports_check_mode=True,
    )
    bad = [name for name, argv in module.params["commands"].items() if not isinstance(argv, list) or not argv]
    if bad:
        module.fail_json(msg=f"each command must be a non-empty list of arguments: {', '.join(sorted(bad))}")
    module.exit_json(
        changed=False, **read_host(module.params["commands"], module.params["files"], module.params["paths"])
    )


if __name__ == "__main__":
    main()
