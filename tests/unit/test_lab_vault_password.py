"""The lab's vault password is made once, private to its owner, and the same on every read."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import lab_vault_password


def test_the_password_is_created_private_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "lab" / "vault-password"
    first = lab_vault_password.lab_password(path)
    assert len(first) >= 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert lab_vault_password.lab_password(path) == first


def test_each_lab_gets_its_own_password(tmp_path: Path) -> None:
    assert lab_vault_password.lab_password(tmp_path / "a") != lab_vault_password.lab_password(tmp_path / "b")
