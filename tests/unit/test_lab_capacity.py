"""The lab refuses to start more containers than root's inotify instances can carry, before it
touches anything: past that limit containers boot "degraded" with failed units that hide the cause
(a CI run failed that way while a benchmark's twelve containers ran beside its scenarios)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import REPO, run_playbook

PODMAN_ENV = {"CONTAINERS_CONF": str(REPO / "lab" / "containers.conf")}
PER_CONTAINER = 8  # roles/lab_podman/vars/main.yml


def podman(*args: str) -> str:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, check=True, env={**os.environ, **PODMAN_ENV}
    ).stdout


@pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed (make deps)")
def test_too_many_containers_for_the_hosts_inotify_limit_fail_first(
    write_inventory: Callable[[dict[str, object], dict[str, object]], Path],
) -> None:
    limit = int(Path("/proc/sys/fs/inotify/max_user_instances").read_text())
    names = [f"never-lab-{i}" for i in range(limit // PER_CONTAINER + 1)]
    inventory = write_inventory(
        {"children": {"untrusted": {"hosts": dict.fromkeys(names)}}},
        {"lab_podman_network": "never-lab", "lab_podman_subnet": "10.90.99.0/24"},
    )
    result = run_playbook(REPO / "playbooks/lab_up.yml", inventory, env=PODMAN_ENV)
    assert result.returncode != 0
    assert f"{len(names)} containers to start need about {len(names) * PER_CONTAINER} inotify instances" in (
        result.stdout
    ), result.stdout[-3000:]
    assert "sysctl -w fs.inotify.max_user_instances=" in result.stdout
    # Nothing was built or started: no container, no network.
    running = {name for c in json.loads(podman("ps", "-a", "--format", "json")) for name in c["Names"]}
    assert not running.intersection(names)
    assert "never-lab" not in podman("network", "ls", "--format", "{{.Name}}").split()
