"""No secret is handed to a module where Ansible would write it to a disk, on a node or the controller.

plugins/action/etcd_assert_pipelined.py asks the task's real connection; these run it for real on
localhost under each setting that turns pipelining off or keeps module files, and check its reading
of /proc/mounts for the controller's temporary directory.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from conftest import REPO, run_playbook

_SPEC = importlib.util.spec_from_file_location(
    "etcd_assert_pipelined", REPO / "plugins/action/etcd_assert_pipelined.py"
)
assert _SPEC and _SPEC.loader
ACTION = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(ACTION)

PLAYBOOK = REPO / "tests/unit/playbooks/assert_pipelined.yml"
MOUNTS = """overlay / overlay rw 0 0
tmpfs /dev/shm tmpfs rw 0 0
/dev/sda1 /work ext4 rw 0 0
tmpfs /work/ram tmpfs rw 0 0
"""


def run(inventory: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = run_playbook(PLAYBOOK, inventory, *args, env=env)
    return result.returncode, " ".join((result.stdout + result.stderr).split())


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    path = tmp_path / "hosts.yml"
    path.write_text("all:\n  hosts:\n    localhost:\n      ansible_connection: local\n")
    return path


def test_the_projects_settings_pass(inventory: Path) -> None:
    code, output = run(inventory, "-v")
    assert code == 0, output
    assert "modules reach localhost on stdin only" in output


@pytest.mark.parametrize(
    ("args", "env", "reason"),
    [
        pytest.param(
            (),
            {"ANSIBLE_KEEP_REMOTE_FILES": "1"},
            "ANSIBLE_KEEP_REMOTE_FILES keeps every module file",
            id="keep",
        ),
        pytest.param(
            (),
            {"ANSIBLE_PIPELINING": "false"},
            "pipelining is off for connection 'local'",
            id="off",
        ),
        pytest.param(
            ("-e", "ansible_become=true", "-e", "ansible_become_method=su"),
            {},
            "become method 'su' turns pipelining off",
            id="su",
        ),
        pytest.param(
            (),
            {"ANSIBLE_LOCAL_TEMP": str(REPO / ".cache/unit-local-tmp")},
            "the controller's temporary directory",
            id="local tmp on disk",
        ),
    ],
)
def test_each_way_a_secret_would_reach_a_disk_is_refused(
    inventory: Path, args: tuple[str, ...], env: dict[str, str], reason: str
) -> None:
    code, output = run(inventory, *args, env=env)
    assert code != 0, output
    assert "Refusing to hand the unit test's secret to modules on localhost" in output, output
    assert reason in output and "Nothing was changed." in output, output


def test_the_filesystem_of_a_path_is_its_longest_mount_point() -> None:
    assert ACTION.filesystem_of("/dev/shm/ansible-local", MOUNTS) == "tmpfs"
    assert ACTION.filesystem_of("/work/main/.cache", MOUNTS) == "ext4"
    assert ACTION.filesystem_of("/work/ram/x", MOUNTS) == "tmpfs"
    assert ACTION.filesystem_of("/work", MOUNTS) == "ext4"
    assert ACTION.filesystem_of("/workshop", MOUNTS) == "overlay"
