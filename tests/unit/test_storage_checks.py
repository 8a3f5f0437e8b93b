"""The data-directory checks refuse a RAM disk beside swap that is not encrypted, and say why.

They run on the controller itself (they only read), with /proc/swaps replaced by a test file: a
swap partition that is not a crypt device must be refused, no swap at all must pass.
"""

from __future__ import annotations

import sys
from pathlib import Path

from conftest import REPO, run_playbook

PLAYBOOK = REPO / "tests/unit/playbooks/storage_checks.yml"
HEADER = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"


def run_checks(tmp_path: Path, swaps: str, *extra: str) -> tuple[int, str]:
    swaps_file = tmp_path / "swaps"
    swaps_file.write_text(HEADER + swaps)
    result = run_playbook(
        PLAYBOOK,
        Path("localhost,"),
        "-c",
        "local",
        "-e",
        f"ansible_python_interpreter={sys.executable}",
        "-e",
        f"__etcd_storage_swaps_file={swaps_file}",
        "-e",
        "etcd_storage_mode=tmpfs",
        *extra,
    )
    return result.returncode, " ".join((result.stdout + result.stderr).split())


def test_unencrypted_swap_is_refused_for_a_ram_disk(tmp_path: Path) -> None:
    rc, output = run_checks(tmp_path, "/dev/nonexistent-swap1\tpartition\t1048572\t0\t-2\n")
    assert rc != 0, output
    assert "has swap that is not encrypted: /dev/nonexistent-swap1. Nothing was changed." in output, output


def test_unencrypted_swap_can_be_accepted_explicitly(tmp_path: Path) -> None:
    rc, output = run_checks(
        tmp_path,
        "/dev/nonexistent-swap1\tpartition\t1048572\t0\t-2\n",
        "-e",
        "etcd_storage_allow_unencrypted_swap=true",
    )
    assert rc == 0, output


def test_no_swap_passes(tmp_path: Path) -> None:
    rc, output = run_checks(tmp_path, "")
    assert rc == 0, output


def run_luks_checks(tmp_path: Path, *extra: str) -> tuple[int, str]:
    # A stand-in for the device-mapper control node, so the checks get past that one.
    dm_control = tmp_path / "control"
    dm_control.write_text("")
    return run_checks(
        tmp_path,
        "",
        "-e",
        "etcd_storage_mode=luks",
        "-e",
        f"etcd_storage_luks_device={tmp_path / 'no-such-device'}",
        "-e",
        f"etcd_storage_luks_key_dir={tmp_path / 'keys'}",
        "-e",
        f"__etcd_storage_dm_control_path={dm_control}",
        *extra,
    )


PIPELINING_REFUSAL = "without pipelining those are written to a temporary file on the host's disk first"


def test_luks_key_is_not_handed_over_a_connection_without_pipelining(tmp_path: Path) -> None:
    rc, output = run_luks_checks(tmp_path, "-e", "ansible_pipelining=false")
    assert rc != 0, output
    assert PIPELINING_REFUSAL in output and "Nothing was changed." in output, output


def test_luks_key_may_travel_over_a_pipelining_connection(tmp_path: Path) -> None:
    _rc, output = run_luks_checks(tmp_path, "-e", "ansible_pipelining=true")
    # Later checks may stop it (there is no such device); this one must not.
    assert "Refuse to hand the LUKS key over a connection" in output, output
    assert PIPELINING_REFUSAL not in output, output
