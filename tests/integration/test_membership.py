"""etcd's live membership is a control: the play adds members as learners one at a time, takes one
that cannot join out again, and stops (as the summary and the audit fail) on a member the
inventory does not name.

The growing and shrinking of the cluster under load (3 -> 5 -> 3) is issue 18's next slice; the
rejoin of an emptied member as a learner, under writes, is in test_storage.py.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from testinfra.host import Host

from conftest import ADMIN_ETCDCTL, Membership, Topology, audit, failed, membership, run_site

HostOf = Callable[[str], Host]
PEER = 2380

pytestmark = [pytest.mark.changes_cluster(order=3), pytest.mark.debian12_only]


def everyone(topology: Topology, but: str = "") -> Membership:
    names = tuple(sorted(m for m in topology.members if m != but))
    return Membership(voters=len(names), learners=0, unstarted_voters=0, names=names)


def changed_per_host(output: str) -> dict[str, int]:
    return {h: int(c) for h, c in re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", output, re.MULTILINE)}


@contextmanager
def squatting(member: str, address: str, port: int) -> Iterator[None]:
    """A listener of the test's own on the member's peer address and port: etcd cannot bind it."""
    marker = f"etcd-test-squatter-{uuid.uuid4().hex[:8]}"
    script = (
        "import socket, sys, threading\n"
        "s = socket.socket()\n"
        f"s.bind(('{address}', {port}))\n"
        "s.listen(1)\n"
        f"open('/run/{marker}', 'w').close()\n"
        "threading.Event().wait()\n"
    )
    subprocess.run(["podman", "exec", "-d", member, "python3", "-c", script, marker], check=True)
    try:
        started = ["podman", "exec", member, "test", "-e", f"/run/{marker}"]
        for _ in range(50):
            if subprocess.run(started, check=False).returncode == 0:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"the squatter on {member} did not start")
        yield
    finally:
        subprocess.run(["podman", "exec", member, "pkill", "-f", marker], check=False)
        subprocess.run(["podman", "exec", member, "rm", "-f", f"/run/{marker}"], check=False)


def test_a_member_that_cannot_start_is_taken_out_again_and_a_rerun_adds_it(
    topology: Topology, host_of: HostOf
) -> None:
    member, via = topology.members[-1], topology.members[0]
    data = f"/var/lib/etcd/{topology.cluster_vars['etcd_cluster_name']}"
    host = host_of(member)
    # The member loses its data (a rebuilt host), and something else holds its peer port.
    host.check_output(f"systemctl stop etcd.service && rm -rf {data}/member")
    with squatting(member, topology.addresses[member], PEER):
        refused = run_site(topology, "-e", "etcd_health_timeout=20")
        after_failure = membership(via)
        state = host.run("systemctl is-active etcd.service").stdout.strip()
        half_member = host.run(f"test -e {data}/member").rc == 0
    healed = run_site(topology)

    assert refused.returncode != 0, refused.stdout[-5000:]
    assert f"{member} did not join etcd cluster" in refused.stdout, refused.stdout[-5000:]
    assert "It was removed from the cluster again" in refused.stdout
    # The others vote on, nobody is pending, and the member is stopped with nothing half-fetched.
    assert after_failure == everyone(topology, but=member), after_failure
    assert state != "active" and not half_member, (state, half_member)
    # Once the port is free, the next run adds it (as a learner, then promoted).
    assert healed.returncode == 0, healed.stdout[-5000:]
    assert f"Rejoin | Promote the learner to a voting member once it has caught up, {member}" in healed.stdout
    assert membership(via) == everyone(topology)
    assert "membership: matches the inventory" in healed.stdout


def test_a_member_added_by_hand_stops_the_play_and_fails_the_summary_and_the_audit(
    topology: Topology, tmp_path: Path
) -> None:
    via = topology.members[0]
    # An address in the members' network that no host has.
    network = ipaddress.ip_network(f"{topology.addresses[via]}/24", strict=False)
    ghost_url = f"https://{network[250]}:{PEER}"
    added = subprocess.run(
        ["podman", "exec", via, *ADMIN_ETCDCTL.split(), "--endpoints=https://127.0.0.1:2379",
         "member", "add", "ghost", f"--peer-urls={ghost_url}", "-w", "json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    ghost_id = f"{json.loads(added.stdout)['member']['ID']:x}"
    try:
        refused = run_site(topology)
        summary = run_site(topology, "--check", "--tags", "summary")
        audited = audit(topology, tmp_path)
    finally:
        subprocess.run(
            ["podman", "exec", via, *ADMIN_ETCDCTL.split(), "--endpoints=https://127.0.0.1:2379",
             "member", "remove", ghost_id],
            check=True, capture_output=True,
        )  # fmt: skip

    assert refused.returncode != 0, refused.stdout[-5000:]
    assert f"ID {ghost_id}, peer URLs {ghost_url}" in refused.stdout, refused.stdout[-5000:]
    assert "Nothing was added, removed or restarted" in refused.stdout
    assert "member remove ID" in refused.stdout
    changed = changed_per_host(refused.stdout)
    assert changed and set(changed.values()) == {0}, changed
    assert summary.returncode == 0, summary.stdout[-5000:]
    assert "membership: DIFFERS FROM THE INVENTORY" in summary.stdout and ghost_url in summary.stdout
    assert not re.search(r'"\S+: healthy;', summary.stdout), "a member is still called healthy"
    assert audited.returncode == 1, audited.output
    assert {(m, "etcd-membership") for m in topology.members} <= failed(audited), audited.output
    assert membership(via) == everyone(topology)
