"""plugins/connection/podman_pipelined.py: one `podman exec --interactive` per task, stdin whole.

A stand-in `podman` runs the "container's" commands on this machine and logs its arguments;
like the real podman, it connects the command's stdin only with --interactive.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import run_playbook

FAKE_PODMAN = """#!/bin/bash
printf '%s\\n' "$*" >> "{log}"
case "$1" in
  mount) exit 125 ;;
  cp) exec cp "$2" "${{3#*:}}" ;;
  exec)
    shift; interactive=0
    while [[ $1 == --* ]]; do
      case $1 in --interactive|-i) interactive=1 ;; --user) shift ;; esac
      shift
    done
    shift  # the container
    if (( interactive )); then exec "$@"; else exec "$@" < /dev/null; fi ;;
esac
exit 2
"""

# The module's arguments travel inside the piped module, so 1 MiB of stdin for sha256sum makes
# the piped data well over a pipe's 64 KiB buffer.
PLAYBOOK = """
- name: Run two modules over the pipelined podman connection
  hosts: all
  gather_facts: false
  tasks:
    - name: Hash a large stdin
      ansible.builtin.command:
        cmd: sha256sum
        stdin: "{{ lookup('ansible.builtin.file', payload_file) }}"
        stdin_add_newline: false
      register: hashed
      changed_when: false

    - name: Show the hash
      ansible.builtin.debug:
        msg: "HASH={{ hashed.stdout.split()[0] }}"

    - name: Stat a file
      ansible.builtin.stat:
        path: /etc/hostname
"""


@pytest.fixture
def fake_podman(tmp_path: Path) -> tuple[Path, Path]:
    log = tmp_path / "podman.log"
    script = tmp_path / "podman"
    script.write_text(FAKE_PODMAN.format(log=log))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, log


def run_with(
    connection: str,
    fake_podman: tuple[Path, Path],
    tmp_path: Path,
    write_inventory: Callable[[dict[str, object], dict[str, object]], Path],
) -> tuple[str, list[str], str]:
    script, log = fake_podman
    payload = os.urandom(512 * 1024).hex()
    (tmp_path / "payload.txt").write_text(payload)
    (tmp_path / "site.yml").write_text(PLAYBOOK)
    inventory = write_inventory(
        {"hosts": {"fake-container": None}},
        {
            "ansible_connection": connection,
            "ansible_podman_executable": str(script),
            "ansible_python_interpreter": "/usr/bin/python3",
            "payload_file": str(tmp_path / "payload.txt"),
        },
    )
    result = run_playbook(tmp_path / "site.yml", inventory)
    calls = log.read_text().splitlines() if log.exists() else []
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout, calls, hashlib.sha256(payload.encode()).hexdigest()


def test_each_task_is_one_interactive_exec_and_stdin_arrives_whole(
    fake_podman: tuple[Path, Path],
    tmp_path: Path,
    write_inventory: Callable[[dict[str, object], dict[str, object]], Path],
) -> None:
    stdout, calls, expected = run_with("podman_pipelined", fake_podman, tmp_path, write_inventory)
    assert f"HASH={expected}" in stdout
    execs = [call for call in calls if call.startswith("exec")]
    assert len(execs) == 2, calls  # the command and the stat, nothing else
    assert all(call.startswith("exec --interactive fake-container ") for call in execs), execs
    assert not [call for call in calls if call.startswith("cp")], calls


def test_the_collections_connection_needs_a_copy_and_more_execs_per_task(
    fake_podman: tuple[Path, Path],
    tmp_path: Path,
    write_inventory: Callable[[dict[str, object], dict[str, object]], Path],
) -> None:
    """The control: the same play over containers.podman.podman, which cannot pipeline."""
    stdout, calls, expected = run_with("containers.podman.podman", fake_podman, tmp_path, write_inventory)
    assert f"HASH={expected}" in stdout
    execs = [call for call in calls if call.startswith("exec")]
    assert len(execs) >= 2 * 4, calls  # per task: home, mkdir, chmod, python, rm
    assert not [call for call in execs if "--interactive" in call], execs
