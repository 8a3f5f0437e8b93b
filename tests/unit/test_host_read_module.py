"""plugins/modules/etcd_host_read.py, run as Ansible runs it (JSON arguments in, JSON out)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "plugins/modules/etcd_host_read.py"


def run(tmp_path: Path, *, check: bool = False, **params: object) -> dict[str, Any]:
    arguments = tmp_path / "args.json"
    arguments.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {**params, "_ansible_check_mode": check}}))
    done = subprocess.run(
        [sys.executable, str(MODULE), str(arguments)], capture_output=True, text=True, check=False
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_each_command_answers_on_its_own_and_a_failure_fails_nothing(tmp_path: Path) -> None:
    result = run(
        tmp_path,
        commands={
            "ok": ["sh", "-c", "echo out; echo err >&2"],
            "fails": ["sh", "-c", "exit 3"],
            "missing": ["/nonexistent/program"],
        },
    )
    assert not result.get("failed") and not result["changed"], result
    assert result["commands"]["ok"] == {"rc": 0, "stdout": "out\n", "stderr": "err\n"}
    assert result["commands"]["fails"]["rc"] == 3
    assert result["commands"]["missing"]["rc"] == 127


def test_files_and_paths_are_read_and_a_missing_one_says_so(tmp_path: Path) -> None:
    unit = tmp_path / "etcd.service"
    unit.write_text("[Unit]\n")
    unit.chmod(0o600)
    result = run(
        tmp_path,
        check=True,
        files={"unit": str(unit), "gone": str(tmp_path / "gone"), "dir": str(tmp_path)},
        paths={"unit": str(unit), "dir": str(tmp_path), "gone": str(tmp_path / "gone")},
    )
    assert not result.get("failed"), result
    assert result["files"] == {
        "unit": {"exists": True, "content": "[Unit]\n"},
        "gone": {"exists": False, "content": None},
        "dir": {"exists": True, "content": None},
    }
    assert result["paths"]["unit"] == {
        "exists": True,
        "isdir": False,
        "isreg": True,
        "mode": "0600",
        "uid": os.getuid(),
        "gid": os.getgid(),
    }
    assert result["paths"]["dir"]["isdir"] and result["paths"]["gone"] == {"exists": False}


def test_a_command_that_is_not_a_list_is_refused(tmp_path: Path) -> None:
    result = run(tmp_path, commands={"shell": "rm -rf /tmp/x", "empty": []})
    assert result.get("failed") and "empty, shell" in result["msg"], result
