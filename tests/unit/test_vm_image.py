"""The VM image is named after its recipe (packages, hooks, the SSH key let in), so it is rebuilt
exactly when one of them changes, and only a complete build gets that name."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import vm_image

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTheTest test@controller"


def test_the_image_directory_changes_with_the_key_and_the_packages(tmp_path: Path) -> None:
    base = vm_image.VmRecipe(suite="trixie", authorized_key=KEY)
    same = vm_image.VmRecipe(suite="trixie", authorized_key=KEY)
    assert base.directory(tmp_path) == same.directory(tmp_path)
    other_key = dataclasses.replace(base, authorized_key=KEY.replace("Fake", "Other"))
    more = dataclasses.replace(base, packages=(*base.packages, "curl"))
    assert len({base.directory(tmp_path), other_key.directory(tmp_path), more.directory(tmp_path)}) == 3
    assert base.directory(tmp_path).parent == tmp_path / "images"


def test_the_build_lets_in_the_key_and_leaves_etcd_to_the_play(tmp_path: Path) -> None:
    cmd = vm_image.VmRecipe(suite="trixie", authorized_key=KEY).mmdebstrap_command(tmp_path / "tree")
    assert cmd[0] == "mmdebstrap" and cmd[-2:] == ["trixie", str(tmp_path / "tree")]
    assert any(KEY in part and "authorized_keys" in part for part in cmd)
    assert '--customize-hook=chroot "$1" systemctl disable etcd.service' in cmd
    included = next(part for part in cmd if part.startswith("--include=")).split("=", 1)[1].split(",")
    assert {"linux-image-cloud-amd64", "cryptsetup-bin", "apparmor", "etcd-server"} <= set(included)


def test_an_existing_image_is_not_rebuilt(tmp_path: Path) -> None:
    recipe = vm_image.VmRecipe(suite="trixie", authorized_key=KEY)
    recipe.directory(tmp_path).mkdir(parents=True)
    result = vm_image.ensure(recipe, tmp_path)
    assert result["built"] is False
    assert result["rootfs"] == str(recipe.directory(tmp_path) / "rootfs.raw")


def test_what_a_killed_build_left_mounted_is_unmounted_before_it_is_removed(tmp_path: Path) -> None:
    """A killed mmdebstrap leaves the host's /dev/shm bind-mounted in its tree: removing the tree
    must not reach through it. Here a directory of our own stands in for /dev/shm."""
    outside = tmp_path / "host-shm"
    outside.mkdir()
    (outside / "keep-me").write_text("host file")
    leftover = tmp_path / "images" / "etcd-vm-image-killed" / "tree" / "dev" / "shm"
    leftover.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "--bind", str(outside), str(leftover)], check=False, capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {mounted.stderr.decode().strip()}")
    try:
        assert subprocess.run(["mountpoint", "-q", str(leftover)], check=False).returncode == 0
        vm_image.unmount_below(tmp_path / "images" / "etcd-vm-image-killed")
        assert subprocess.run(["mountpoint", "-q", str(leftover)], check=False).returncode != 0
        shutil.rmtree(tmp_path / "images" / "etcd-vm-image-killed")
        assert (outside / "keep-me").read_text() == "host file"
    finally:
        subprocess.run(["umount", "--lazy", str(leftover)], check=False, capture_output=True)
