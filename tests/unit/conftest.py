"""Shared helpers for the unit tests: running ansible-playbook on throwaway inventories."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def run_playbook(
    playbook: Path, inventory: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        **(env or {}),
    }
    return subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), str(playbook), *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=REPO,
        check=False,
    )


@pytest.fixture
def write_inventory(tmp_path: Path) -> Callable[[dict[str, object], dict[str, object]], Path]:
    """Write hosts.yml and group_vars/all.yml into a fresh directory; return the hosts file."""

    def write(hosts: dict[str, object], group_vars: dict[str, object]) -> Path:
        inventory = tmp_path / "inventory"
        (inventory / "group_vars").mkdir(parents=True, exist_ok=True)
        (inventory / "hosts.yml").write_text(yaml.safe_dump({"all": hosts}))
        (inventory / "group_vars" / "all.yml").write_text(yaml.safe_dump(group_vars))
        return inventory / "hosts.yml"

    return write
