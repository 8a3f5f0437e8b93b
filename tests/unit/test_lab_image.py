"""The lab image is named after its recipe, so it is rebuilt exactly when the recipe changes."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import lab_image


def test_same_recipe_same_tag() -> None:
    assert lab_image.recipe_for("trixie").image_ref() == lab_image.recipe_for("trixie").image_ref()


def test_tag_changes_with_the_package_list_and_the_suite() -> None:
    base = lab_image.recipe_for("trixie")
    more = dataclasses.replace(base, packages=(*base.packages, "curl"))
    assert more.image_ref() != base.image_ref()
    assert lab_image.recipe_for("bookworm").image_ref() != base.image_ref()
    assert base.image_ref().startswith("localhost/etcd-lab-node:trixie-")


def test_build_masks_units_that_cannot_run_in_a_container(tmp_path: Path) -> None:
    cmd = lab_image.recipe_for("bookworm").mmdebstrap_command(tmp_path / "x.tar")
    assert cmd[0] == "mmdebstrap" and cmd[-2:] == ["bookworm", str(tmp_path / "x.tar")]
    assert '--customize-hook=chroot "$1" systemctl mask systemd-modules-load.service' in cmd
    assert any(c.startswith("--include=") and "python3-cryptography" in c for c in cmd)


def test_import_boots_systemd(tmp_path: Path) -> None:
    cmd = lab_image.recipe_for("trixie").import_command(tmp_path / "x.tar")
    assert 'CMD ["/sbin/init"]' in cmd and "STOPSIGNAL SIGRTMIN+3" in cmd


def test_unknown_suite_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported suite 'sid'"):
        lab_image.recipe_for("sid")
