"""The etcd_nft_table module against real nftables, each test in a network namespace of its own."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "roles/etcd_firewall/library/etcd_nft_table.py"

OURS = """
table inet guard
delete table inet guard
table inet guard {
    set clients_v4 { type ipv4_addr; flags interval; auto-merge; elements = { %s } }
    chain input {
        type filter hook input priority filter - 10; policy accept;
        tcp dport 2379 ip saddr @clients_v4 accept
        tcp dport { 2379, 2380 } drop
    }
}
"""
FOREIGN = """
table inet host_firewall {
    chain input {
        type filter hook input priority filter; policy accept;
        tcp dport 22 counter accept comment "host firewall"
    }
}
"""

Netns = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def netns() -> Iterator[Netns]:
    """Run commands inside a fresh network namespace; removed afterwards."""
    name = f"nfttest-{uuid.uuid4().hex[:8]}"
    try:
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"cannot create a network namespace here: {error}")

    def run(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", name, *argv], input=stdin, capture_output=True, text=True, check=False
        )

    yield run
    subprocess.run(["ip", "netns", "delete", name], check=False)


def module(netns: Netns, tmp_path: Path, check: bool = False, **args: str) -> dict[str, Any]:
    """Run the module the way Ansible does, with its arguments in a JSON file."""
    args_file = tmp_path / f"args-{uuid.uuid4().hex[:6]}.json"
    args_file.write_text(
        json.dumps({"ANSIBLE_MODULE_ARGS": {**args, "_ansible_check_mode": check, "_ansible_diff": True}})
    )
    result = netns(sys.executable, str(MODULE), str(args_file))
    output: dict[str, Any] = json.loads(result.stdout)
    return output


def listing(netns: Netns, family: str, name: str) -> str:
    return netns("nft", "list", "table", family, name).stdout


def test_loads_the_table_then_reports_no_change(netns: Netns, tmp_path: Path) -> None:
    first = module(netns, tmp_path, name="guard", script=OURS % "10.0.0.1, 10.0.0.2")
    again = module(netns, tmp_path, name="guard", script=OURS % "10.0.0.1, 10.0.0.2")

    assert first["changed"] is True and first["diff"]["before"] == ""
    assert "10.0.0.2" in listing(netns, "inet", "guard")
    assert again["changed"] is False, again.get("diff")


def test_same_sources_in_another_order_or_overlapping_are_no_change(netns: Netns, tmp_path: Path) -> None:
    module(netns, tmp_path, name="guard", script=OURS % "10.0.0.0/24, 10.0.1.5")
    again = module(netns, tmp_path, name="guard", script=OURS % "10.0.1.5, 10.0.0.7, 10.0.0.0/24")

    assert again["changed"] is False, again.get("diff")


def test_never_touches_another_table(netns: Netns, tmp_path: Path) -> None:
    assert netns("nft", "-f", "-", stdin=FOREIGN).returncode == 0

    module(netns, tmp_path, name="guard", script=OURS % "10.0.0.1")
    module(netns, tmp_path, name="guard", script=OURS % "10.0.0.9")
    module(netns, tmp_path, name="guard", state="absent")

    assert 'comment "host firewall"' in listing(netns, "inet", "host_firewall")
    assert listing(netns, "inet", "guard") == ""


def test_check_mode_reports_a_deleted_rule_and_a_run_restores_it(netns: Netns, tmp_path: Path) -> None:
    module(netns, tmp_path, name="guard", script=OURS % "10.0.0.1")
    handles = netns("nft", "--handle", "list", "chain", "inet", "guard", "input").stdout
    accept_handle = next(line for line in handles.splitlines() if "saddr" in line).split("# handle ")[1]
    assert netns("nft", "delete", "rule", "inet", "guard", "input", "handle", accept_handle).returncode == 0

    checked = module(netns, tmp_path, check=True, name="guard", script=OURS % "10.0.0.1")
    still_drifted = listing(netns, "inet", "guard")
    repaired = module(netns, tmp_path, name="guard", script=OURS % "10.0.0.1")

    assert checked["changed"] is True
    assert "ip saddr @clients_v4 accept" not in checked["diff"]["before"]
    assert "ip saddr @clients_v4 accept" in checked["diff"]["after"]
    assert "ip saddr @clients_v4 accept" not in still_drifted, "check mode changed the live table"
    assert repaired["changed"] is True
    assert "ip saddr @clients_v4 accept" in listing(netns, "inet", "guard")


def test_counters_are_not_drift(netns: Netns, tmp_path: Path) -> None:
    script = OURS.replace("tcp dport { 2379, 2380 } drop", "tcp dport { 2379, 2380 } counter drop")
    module(netns, tmp_path, name="guard", script=script % "10.0.0.1")
    # Packets through lo make the counter non-zero in the live table, never in a fresh namespace.
    netns("ip", "link", "set", "lo", "up")
    # The drop rule makes the connection hang: a short timeout, not the kernel's two minutes.
    connect = "import socket; s = socket.socket(); s.settimeout(0.5); s.connect_ex(('127.0.0.1', 2380))"
    netns(sys.executable, "-c", connect)

    again = module(netns, tmp_path, name="guard", script=script % "10.0.0.1")

    assert again["changed"] is False, again.get("diff")


def test_a_script_nft_refuses_fails_and_changes_nothing(netns: Netns, tmp_path: Path) -> None:
    module(netns, tmp_path, name="guard", script=OURS % "10.0.0.1")
    before = listing(netns, "inet", "guard")

    result = module(netns, tmp_path, name="guard", script=OURS % "10.0.0.300")

    assert result.get("failed") is True
    assert "10.0.0.300" in result["msg"], result["msg"]
    assert listing(netns, "inet", "guard") == before
