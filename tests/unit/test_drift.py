"""The drift check reads Ansible's JSON report: a change is drift, a failure is no verdict.

The reports here have the shape ansible.posix.json writes (plays -> tasks -> hosts -> result); the
integration tests run the real thing against the lab.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))

from drift import Verdict, describe_diff, render, verdict_of


def report(
    *tasks: tuple[str, dict[str, dict[str, Any]]], stats: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "plays": [
            {
                "play": {"name": "etcd"},
                "tasks": [{"task": {"name": name}, "hosts": hosts} for name, hosts in tasks],
            }
        ],
        "stats": stats or {},
    }


def test_a_run_that_changes_nothing_is_clean() -> None:
    verdict = verdict_of(
        report(("Read the unit", {"etcd-1": {"changed": False}, "etcd-2": {"changed": False}}))
    )
    assert verdict == Verdict(changes=[], failures=[]) and verdict.exit_code == 0
    assert render(verdict).endswith("no drift: a real run would change nothing")


def test_a_loosened_mode_is_drift_and_says_what_changes() -> None:
    diff = {
        "before": {"path": "/etc/etcd/pki/server.key", "mode": "0644"},
        "after": {"path": "/etc/etcd/pki/server.key", "mode": "0600"},
    }
    verdict = verdict_of(report(("Certs | Restrict the key", {"etcd-2": {"changed": True, "diff": diff}})))
    assert verdict.exit_code == 1
    [change] = verdict.changes
    assert (change.host, change.task, change.what) == (
        "etcd-2",
        "Certs | Restrict the key",
        ["/etc/etcd/pki/server.key: mode 0644 -> 0600"],
    )
    assert "drift: 1 task(s) would change 1 host(s): etcd-2" in render(verdict)


def test_file_contents_are_summarised_not_printed() -> None:
    diff = {
        "before_header": "/etc/systemd/system/etcd.service",
        "after_header": "/etc/systemd/system/etcd.service (templated)",
        "before": "a\n  --client-cert-auth=false \\\nb\n",
        "after": "a\n  --client-cert-auth=true \\\nb\n",
    }
    verdict = verdict_of(
        report(("Configure | Write the unit", {"etcd-1": {"changed": True, "diff": [diff]}}))
    )
    [line] = verdict.changes[0].what
    assert line == "/etc/systemd/system/etcd.service: 1 line(s) removed, 1 added"
    assert "client-cert-auth" not in render(verdict)


def test_only_the_changed_items_of_a_loop_are_listed() -> None:
    result = {
        "changed": True,
        "results": [
            {"changed": False, "item": "ca.crt"},
            {
                "changed": True,
                "item": "peer.key",
                "diff": {"before": {"path": "/k", "owner": "etcd"}, "after": {"path": "/k", "owner": "root"}},
            },
        ],
    }
    verdict = verdict_of(report(("Certs | Own the keys", {"etcd-3": result})))
    assert verdict.changes[0].what == ["/k: owner etcd -> root"]


def test_a_secret_task_says_only_that_it_would_change() -> None:
    result = {
        "changed": True,
        "censored": "the output has been hidden due to the fact that 'no_log: true' was specified",
    }
    verdict = verdict_of(report(("LUKS | Open the volume", {"etcd-1": result})))
    assert verdict.changes[0].what == ["(no_log: details hidden)"]


def test_a_failed_or_unreachable_host_gives_no_verdict() -> None:
    verdict = verdict_of(
        report(
            ("Preflight | Check", {"etcd-1": {"failed": True, "msg": "odd member count"}}),
            ("Gather", {"etcd-2": {"unreachable": True, "msg": "ssh: timeout"}}),
            ("Ignored", {"etcd-3": {"failed": True, "ignore_errors": True}}),
        )
    )
    assert verdict.exit_code == 2
    assert verdict.failures == [
        "etcd-1: 'Preflight | Check' failed: odd member count",
        "etcd-2: unreachable during 'Gather': ssh: timeout",
    ]


def test_a_new_file_is_described_as_created() -> None:
    assert describe_diff({"after_header": "/etc/nftables.d/etcd.nft", "before": "", "after": "x\ny\n"}) == [
        "/etc/nftables.d/etcd.nft: would be created (2 lines)"
    ]


def test_the_script_exits_with_its_verdict_and_writes_the_report(tmp_path: Path) -> None:
    """The command line, on a fake ansible-playbook that prints a report with one change."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    printed = report(
        ("Firewall | Load the table", {"etcd-1": {"changed": True, "msg": "table etcd_filter missing"}})
    )
    fake = fake_bin / "ansible-playbook"
    fake.write_text(f"#!/bin/sh\necho 'PLAY [x]' >&2\ncat <<'EOF'\n{json.dumps(printed)}\nEOF\n")
    fake.chmod(0o755)
    fake_python = fake_bin / "python3"
    fake_python.symlink_to(sys.executable)
    report_file = tmp_path / "drift.json"
    completed = subprocess.run(
        [
            str(fake_python),
            str(REPO / "scripts/drift.py"),
            "-i",
            "inventory/lab",
            "--report",
            str(report_file),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 1, completed.stdout + completed.stderr
    assert "DRIFT  etcd-1  Firewall | Load the table" in completed.stdout
    assert json.loads(report_file.read_text())["changes"][0]["what"] == ["table etcd_filter missing"]
