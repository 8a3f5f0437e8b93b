"""The lab's vault password is made once, private to its owner, and the same on every read."""

from __future__ import annotations

import stat
import subprocess
import sys
import time
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


def test_first_users_at_once_all_read_one_complete_password(tmp_path: Path) -> None:
    # The CI failure this guards against: ansible-lint's parallel syntax checks and a molecule
    # scenario asked for the password at the same moment; the losers crashed or read it half-written.
    script = Path(lab_vault_password.__file__)
    for attempt in range(5):
        path = tmp_path / str(attempt) / "vault-password"
        start_at = time.time() + 1.0
        runner = (
            "import pathlib, runpy, time\n"
            f"read = runpy.run_path({str(script)!r})['lab_password']\n"
            f"time.sleep(max(0.0, {start_at!r} - time.time()))\n"
            f"print(read(pathlib.Path({str(path)!r})))\n"
        )
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", runner], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
            )
            for _ in range(16)
        ]
        outputs = [process.communicate()[0].strip() for process in processes]
        assert [process.returncode for process in processes] == [0] * len(processes)
        assert len(set(outputs)) == 1 and len(outputs[0]) >= 40
        assert [item.name for item in path.parent.iterdir()] == ["vault-password"]
