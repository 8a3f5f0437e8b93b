"""plugins/filter/etcd_systemd.py names a mount unit exactly as systemd-escape does on this machine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "plugins/filter"))

from etcd_systemd import etcd_mount_unit

PATHS = [
    "/var/lib/etcd/data",
    "/var/lib/etcd",
    "/",
    "/srv//etcd/",
    "/srv/etcd-main/data",
    "/srv/.hidden/etcd",
    "/srv/a+b@c_d.e",
    "/var/lib/etcd/./data",
]


@pytest.mark.parametrize("path", PATHS)
def test_the_name_is_systemd_escapes(path: str) -> None:
    wanted = subprocess.run(
        ["systemd-escape", "--path", "--suffix=mount", path], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert etcd_mount_unit(path) == wanted


@pytest.mark.parametrize("bad", ["var/lib/etcd", "", None])
def test_a_relative_path_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="absolute path"):
        etcd_mount_unit(bad)
