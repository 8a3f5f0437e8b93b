"""plugins/modules/etcd_files.py, run as Ansible runs it (JSON arguments in, JSON out) on real files."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "plugins/modules/etcd_files.py"


def run(tmp_path: Path, *, check: bool = False, diff: bool = True, **params: object) -> dict[str, Any]:
    arguments = tmp_path.parent / f"{tmp_path.name}-args.json"
    arguments.write_text(
        json.dumps({"ANSIBLE_MODULE_ARGS": {**params, "_ansible_check_mode": check, "_ansible_diff": diff}})
    )
    done = subprocess.run(
        [sys.executable, str(MODULE), str(arguments)], capture_output=True, text=True, check=False
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def mode_of(path: Path) -> str:
    return f"{stat.S_IMODE(path.lstat().st_mode):04o}"


def a_file(dest: Path, content: str = "[Unit]\n", mode: str = "0600", **more: object) -> dict[str, Any]:
    return {"dest": str(dest), "content": content, "owner": "root", "group": "root", "mode": mode, **more}


def a_directory(path: Path, mode: str = "0755", owner: str = "root") -> dict[str, Any]:
    return {"path": str(path), "owner": owner, "group": "root", "mode": mode}


def test_it_makes_directories_and_files_then_a_second_run_changes_nothing(tmp_path: Path) -> None:
    directory = tmp_path / "etc/nftables.d"
    unit = directory / "etcd.nft"
    made = run(tmp_path, directories=[a_directory(directory)], files=[a_file(unit, "table inet etcd {}\n")])
    assert not made.get("failed"), made
    assert made["changed"] and made["changed_paths"] == [str(directory), str(unit)]
    assert unit.read_text() == "table inet etcd {}\n"
    assert (mode_of(directory), mode_of(unit), mode_of(directory.parent)) == ("0755", "0600", "0755")
    assert not [p for p in directory.iterdir() if p.name.startswith(".")], "a temporary file was left"

    again = run(tmp_path, directories=[a_directory(directory)], files=[a_file(unit, "table inet etcd {}\n")])
    assert not again["changed"] and again["changed_paths"] == [] and again["diff"] == []


def test_check_mode_reports_every_change_and_touches_nothing(tmp_path: Path) -> None:
    unit = tmp_path / "etcd.service"
    unit.write_text("[Service]\nExecStart=/usr/bin/etcd --client-cert-auth=false\n")
    unit.chmod(0o644)
    new_dir = tmp_path / "etcd.service.d"
    checked = run(
        tmp_path,
        check=True,
        directories=[a_directory(new_dir)],
        files=[a_file(unit, "[Service]\nExecStart=/usr/bin/etcd --client-cert-auth=true\n")],
    )
    assert checked["changed"] and checked["changed_paths"] == [str(new_dir), str(unit)]
    assert not new_dir.exists() and "false" in unit.read_text() and mode_of(unit) == "0644"
    content, attributes = (
        d for d in checked["diff"] if d.get("before_header") or "mode" in d.get("after", {})
    )
    assert "--client-cert-auth=false" in content["before"] and "--client-cert-auth=true" in content["after"]
    assert attributes == {
        "before": {"path": str(unit), "mode": "0644"},
        "after": {"path": str(unit), "mode": "0600"},
    }
    assert {
        "before": {"path": str(new_dir), "state": "absent"},
        "after": {"path": str(new_dir), "state": "directory"},
    } in checked["diff"]


def test_drifted_content_and_modes_are_put_back(tmp_path: Path) -> None:
    directory = tmp_path / "data"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    unit = tmp_path / "etcd.service"
    unit.write_text("tampered\n")
    unit.chmod(0o666)
    repaired = run(tmp_path, directories=[a_directory(directory, "0700")], files=[a_file(unit)])
    assert repaired["changed_paths"] == [str(directory), str(unit)]
    assert (mode_of(directory), mode_of(unit), unit.read_text()) == ("0700", "0600", "[Unit]\n")
    assert {
        "before": {"path": str(directory), "mode": "0755"},
        "after": {"path": str(directory), "mode": "0700"},
    } in repaired["diff"]


def test_a_content_the_validator_refuses_never_replaces_the_file(tmp_path: Path) -> None:
    profile = tmp_path / "etcd"
    profile.write_text("the old profile\n")
    refused = run(tmp_path, files=[a_file(profile, "broken\n", validate=["grep", "-q", "^profile", "%s"])])
    assert refused["failed"] and "failed to validate" in refused["msg"], refused
    assert profile.read_text() == "the old profile\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["etcd"], "a temporary file was left"

    accepted = run(
        tmp_path, files=[a_file(profile, "profile etcd {}\n", validate=["grep", "-q", "^profile", "%s"])]
    )
    assert accepted["changed"] and profile.read_text() == "profile etcd {}\n"
    bad_validator = run(tmp_path, files=[a_file(profile, "profile x {}\n", validate=["true"])])
    assert bad_validator["failed"] and "%s" in bad_validator["msg"]


def test_a_file_without_content_gets_its_attributes_only_and_must_exist(tmp_path: Path) -> None:
    package_file = tmp_path / "default-etcd"
    package_file.write_text("ETCD_NAME=x\n")
    package_file.chmod(0o644)
    attributes_only = {"dest": str(package_file), "owner": "root", "group": "root", "mode": "0600"}
    fixed = run(tmp_path, files=[attributes_only])
    assert (
        fixed["changed"] and mode_of(package_file) == "0600" and package_file.read_text() == "ETCD_NAME=x\n"
    )
    missing = run(tmp_path, files=[{**attributes_only, "dest": str(tmp_path / "absent")}])
    assert missing["failed"] and "does not exist" in missing["msg"]


def test_paths_to_remove_are_removed_whatever_they_are(tmp_path: Path) -> None:
    stray_file = tmp_path / "90-plain-http.conf"
    stray_file.write_text("[Service]\nExecStart=\n")
    stray_dir = tmp_path / "stray.d"
    (stray_dir / "inner").mkdir(parents=True)
    stray_link = tmp_path / "link.conf"
    stray_link.symlink_to("/dev/null")
    gone = [str(stray_file), str(stray_dir), str(stray_link), str(tmp_path / "never-there")]

    checked = run(tmp_path, check=True, absent=gone)
    assert checked["changed_paths"] == gone[:3] and stray_file.exists() and stray_dir.exists()
    removed = run(tmp_path, absent=gone)
    assert removed["changed_paths"] == gone[:3]
    assert not stray_file.exists() and not stray_dir.exists() and not stray_link.is_symlink()
    states = [(d["before"]["state"], d["after"]["state"]) for d in removed["diff"]]
    assert states == [("file", "absent"), ("directory", "absent"), ("link", "absent")]
    assert run(tmp_path, absent=gone)["changed"] is False


def test_an_unknown_owner_fails_before_anything_changes_in_check_mode_too(tmp_path: Path) -> None:
    for check in (True, False):
        failed = run(tmp_path, check=check, directories=[a_directory(tmp_path / "d", owner="no-such-user-x")])
        assert failed["failed"] and "no such user or group" in failed["msg"], failed
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("kind", ["directory", "file"])
def test_a_path_of_the_wrong_kind_is_refused(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "x"
    if kind == "directory":
        path.write_text("a file where a directory is wanted\n")
        refused = run(tmp_path, directories=[a_directory(path)])
    else:
        path.mkdir()
        refused = run(tmp_path, files=[a_file(path)])
    assert (
        refused["failed"]
        and f"is not a {'directory' if kind == 'directory' else 'regular file'}" in refused["msg"]
    )
