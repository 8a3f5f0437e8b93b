"""etcd's live membership is a control: the play adds members as learners one at a time, takes one
that cannot join out again, stops (as the summary and the audit fail) on a member the inventory
does not name, and playbooks/remove_member.yml takes members out without costing quorum. The
cluster grows from 3 to 5 members and back while a client writes.

The rejoin of an emptied member as a learner, under writes, is in test_storage.py.
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
from typing import Any

import pytest
import yaml
from testinfra.host import Host

from conftest import (
    ADMIN_ETCDCTL,
    REPO,
    Membership,
    Topology,
    audit,
    client_writes,
    failed,
    membership,
    podman,
    run_playbook,
    run_site,
    watching_membership,
)

HostOf = Callable[[str], Host]
PEER = 2380
REMOVE_MEMBER = REPO / "playbooks/remove_member.yml"
RESULTS = REPO / "results"

# The two long ones are spread over the scenarios that run side by side in `make test`.
pytestmark = [pytest.mark.changes_cluster(order=3)]


def everyone(topology: Topology, but: str = "") -> Membership:
    names = tuple(sorted(m for m in topology.members if m != but))
    return Membership(voters=len(names), learners=0, unstarted_voters=0, names=names)


def everyone_and(topology: Topology, more: dict[str, dict[str, str]]) -> Membership:
    names = tuple(sorted([*topology.members, *more]))
    return Membership(voters=len(names), learners=0, unstarted_voters=0, names=names)


def changed_per_host(output: str) -> dict[str, int]:
    return {h: int(c) for h, c in re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", output, re.MULTILINE)}


@contextmanager
def squatting(member: str, address: str, port: int) -> Iterator[None]:
    """A listener of the test's own on the member's peer address and port: etcd cannot bind it."""
    marker = f"etcd-test-squatter-{uuid.uuid4().hex[:8]}"
    # SO_REUSEADDR: etcd's own peer connections, just closed, leave the port in TIME_WAIT (seen on
    # bookworm). It does not let a second socket listen there: etcd's bind still fails.
    script = (
        "import socket, sys, threading, traceback\n"
        "try:\n"
        "    s = socket.socket()\n"
        "    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"    s.bind(('{address}', {port}))\n"
        "    s.listen(1)\n"
        "except OSError:\n"
        f"    open('/run/{marker}.error', 'w').write(traceback.format_exc())\n"
        "    raise\n"
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
            error = ["podman", "exec", member, "cat", f"/run/{marker}.error"]
            why = subprocess.run(error, check=False, capture_output=True, text=True).stdout
            pytest.fail(f"the squatter on {member} did not start: {why or 'no error written'}")
        yield
    finally:
        subprocess.run(["podman", "exec", member, "pkill", "-f", marker], check=False)
        subprocess.run(
            ["podman", "exec", member, "rm", "-f", f"/run/{marker}", f"/run/{marker}.error"], check=False
        )


@pytest.mark.debian12_only
def test_a_member_that_cannot_start_is_taken_out_again_and_a_rerun_adds_it(
    topology: Topology, host_of: HostOf
) -> None:
    member, via = topology.members[-1], topology.members[0]
    data = f"/var/lib/etcd/{topology.cluster_vars['etcd_cluster_name']}"
    host = host_of(member)
    # The member loses its data (a rebuilt host), and something else holds its peer port.
    host.check_output(f"systemctl stop etcd.service && rm -rf {data}/member")
    try:
        with squatting(member, topology.addresses[member], PEER):
            refused = run_site(topology, "-e", "etcd_health_timeout=20")
            after_failure = membership(via)
            state = host.run("systemctl is-active etcd.service").stdout.strip()
            half_member = host.run(f"test -e {data}/member").rc == 0
    finally:
        # Once the port is free, the next run adds it back (and leaves the cluster whole for the
        # tests after this one, whatever happened above).
        healed = run_site(topology)

    assert refused.returncode != 0, refused.stdout[-5000:]
    assert f"{member} did not join etcd cluster" in refused.stdout, refused.stdout[-5000:]
    assert "It was removed from the cluster again" in refused.stdout
    # The others vote on, nobody is pending, and the member is stopped with nothing half-fetched.
    assert after_failure == everyone(topology, but=member), after_failure
    assert state != "active" and not half_member, (state, half_member)
    assert healed.returncode == 0, healed.stdout[-5000:]
    assert f"Rejoin | Promote the learner to a voting member once it has caught up, {member}" in healed.stdout
    assert membership(via) == everyone(topology)
    assert "membership: matches the inventory" in healed.stdout


def membership_once_answered(via: str, seconds: int = 60) -> Membership:
    """The membership as soon as `via` answers for it (after a member came back)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return membership(via)
        except subprocess.CalledProcessError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


@pytest.mark.platform_independent
def test_a_member_added_by_hand_stops_the_play_and_fails_the_summary_and_the_audit(
    topology: Topology, host_of: HostOf, tmp_path: Path
) -> None:
    via = topology.members[0]
    # An address in the members' network that no host has.
    network = ipaddress.ip_network(f"{topology.addresses[via]}/24", strict=False)
    ghost_url = f"https://{network[250]}:{PEER}"
    # etcd 3.5 refuses an add ("unhealthy cluster") until every member has been connected for a
    # few seconds, which a test before this one may have just disturbed.
    for _ in range(30):
        added = subprocess.run(
            ["podman", "exec", via, *ADMIN_ETCDCTL.split(), "--endpoints=https://127.0.0.1:2379",
             "member", "add", "ghost", f"--peer-urls={ghost_url}", "-w", "json"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if added.returncode == 0 or "unhealthy cluster" not in added.stderr:
            break
        time.sleep(1)
    assert added.returncode == 0, added.stderr
    ghost_id = f"{json.loads(added.stdout)['member']['ID']:x}"
    try:
        refused = run_site(topology)
        summary = run_site(topology, "--check", "--tags", "summary")
        audited = audit(topology, tmp_path)
        # The command the play printed, refused while one of the members it keeps is down...
        down = topology.members[-1]
        host_of(down).check_output("systemctl stop etcd.service")
        try:
            refused_removal = run_playbook(topology, REMOVE_MEMBER, "-e", f"etcd_remove_member={ghost_id}")
        finally:
            host_of(down).check_output("systemctl start etcd.service")
        # Read once quorum is back: with the ghost, two of four members were up, and etcd 3.5
        # answers member list only with quorum (3.4 answered from the member's own state).
        still_there = membership_once_answered(via)
        # ... and carried out once all are healthy, for a member whose host is gone (it never existed).
        removed = run_playbook(topology, REMOVE_MEMBER, "-e", f"etcd_remove_member={ghost_id}")
    finally:
        subprocess.run(
            ["podman", "exec", via, *ADMIN_ETCDCTL.split(), "--endpoints=https://127.0.0.1:2379",
             "member", "remove", ghost_id],
            check=False, capture_output=True,
        )  # fmt: skip

    assert refused.returncode != 0, refused.stdout[-5000:]
    assert f"ID {ghost_id}, peer URLs {ghost_url}" in refused.stdout, refused.stdout[-5000:]
    assert "Nothing was changed" in refused.stdout
    assert f"ansible-playbook playbooks/remove_member.yml -e etcd_remove_member={ghost_id}" in refused.stdout
    changed = changed_per_host(refused.stdout)
    assert changed and set(changed.values()) == {0}, changed
    assert summary.returncode == 0, summary.stdout[-5000:]
    assert "membership: DIFFERS FROM THE INVENTORY" in summary.stdout and ghost_url in summary.stdout
    assert not re.search(r'"\S+: healthy;', summary.stdout), "a member is still called healthy"
    assert audited.returncode == 1, audited.output
    assert {(m, "etcd-membership") for m in topology.members} <= failed(audited), audited.output
    assert refused_removal.returncode != 0, refused_removal.stdout[-5000:]
    # etcd 3.4 lists members without quorum (two of the four entries were up), so the play gets as
    # far as asking for health and names the member that is down; 3.5 lists them only with quorum,
    # and the play stops one step earlier. Either way nothing is removed.
    unhealthy = f"{down} did not answer /health as healthy"
    refusal = " ".join(refused_removal.stdout.split())
    assert (unhealthy in refusal and "Nothing was changed" in refusal) or (
        "answered etcdctl member list" in refusal and "nothing was removed" in refusal
    ), refused_removal.stdout[-5000:]
    assert still_there.unstarted_voters == 1, still_there
    assert removed.returncode == 0, removed.stdout[-8000:]
    assert "membership: matches the inventory" in removed.stdout
    assert membership(via) == everyone(topology)


@pytest.mark.debian12_only
def test_a_rebuilt_member_host_rejoins_as_a_learner_with_keys_of_its_own(
    topology: Topology, host_of: HostOf
) -> None:
    member, via = topology.members[-1], topology.members[0]
    old_key = host_of(member).check_output("sha256sum /etc/etcd/pki/peer.key").split()[0]
    # The host is rebuilt: same name and address, nothing of the old one left.
    podman("rm", "--force", "--time", "5", member)
    with watching_membership(via) as watch:
        made = run_playbook(topology, REPO / "playbooks/lab_up.yml")
        rejoined = run_site(topology)

    assert made.returncode == 0, made.stdout[-5000:]
    assert rejoined.returncode == 0, rejoined.stdout[-8000:]
    promoted = "Rejoin | Promote the learner to a voting member once it has caught up"
    assert f"{promoted}, {member}" in rejoined.stdout
    assert any(m.learners == 1 for m in watch.seen), watch.seen
    assert all(m.learners <= 1 and m.unstarted_voters == 0 for m in watch.seen), watch.seen
    assert membership(via) == everyone(topology)
    # Its key was made on the new host: no key travelled from anywhere.
    assert host_of(member).check_output("sha256sum /etc/etcd/pki/peer.key").split()[0] != old_key


# --- growing to five members and back ---------------------------------------------------------


def newcomers(topology: Topology) -> dict[str, dict[str, str]]:
    """Two more members for the topology: the next names and addresses of its members' pattern."""
    first = topology.members[0]
    ipv4 = ipaddress.ip_address(str(topology.var(first, "lab_podman_ipv4")))
    ipv6 = ipaddress.ip_address(str(topology.var(first, "lab_podman_ipv6")))
    base = first.rsplit("-", 1)[0]
    count = len(topology.members)
    return {
        f"{base}-{count + n}": {
            "lab_podman_ipv4": str(ipv4 + count - 1 + n),
            "lab_podman_ipv6": str(ipv6 + count - 1 + n),
        }
        for n in (1, 2)
    }


def inventory_with(path: Path, groups: dict[str, dict[str, dict[str, str]]]) -> Path:
    children = {group: {"hosts": hosts} for group, hosts in groups.items() if hosts}
    path.write_text(yaml.safe_dump({"all": {"children": children}}))
    return path


def etcd_servers(host_of: HostOf, apiserver: str) -> list[str]:
    manifest = host_of(apiserver).file("/etc/kubernetes/manifests/kube-apiserver.yaml").content_string
    found = re.search(r"--etcd-servers=(\S+)", manifest)
    assert found, manifest
    return sorted(found.group(1).split(","))


def distinct_voter_counts(seen: list[Membership]) -> list[int]:
    counts: list[int] = []
    for m in seen:
        if not counts or counts[-1] != m.voters:
            counts.append(m.voters)
    return counts


@pytest.mark.platform_independent
def test_the_cluster_grows_to_five_members_and_back_to_three_while_a_client_writes(
    topology: Topology, host_of: HostOf, tmp_path: Path
) -> None:
    new = newcomers(topology)
    grown = inventory_with(tmp_path / "grown.yml", {"etcd": new})
    # The removal as the README says: out of group etcd first (the wanted cluster, never even). The
    # first newcomer stays in the inventory (etcd_retired), so the removal can wipe its host; the
    # second one's host is gone for good before the removal (its container removed), so it is
    # left out of the inventory altogether and must be removed by name without being reached.
    names = list(new)
    kept_host, gone_host = names
    shrunk = inventory_with(tmp_path / "shrunk.yml", {"etcd_retired": {kept_host: new[kept_host]}})
    apiserver, via = topology.apiservers[0], topology.members[0]
    phases: dict[str, dict[str, Any]] = {}
    try:
        made = run_playbook(topology, REPO / "playbooks/lab_up.yml", "-i", str(grown))
        assert made.returncode == 0, made.stdout[-5000:]
        with watching_membership(via) as watch:
            with client_writes(topology, distinct_keys=True) as writes:
                started = time.monotonic()
                added = run_site(topology, "-i", str(grown))
            phases[f"add {', '.join(names)}"] = {
                "seconds": round(time.monotonic() - started),
                "writes": writes,
            }
            at_five = membership(via)
            servers_at_five = etcd_servers(host_of, apiserver)
            podman("rm", "--force", "--time", "5", gone_host)
            with client_writes(topology, distinct_keys=True) as writes:
                started = time.monotonic()
                removed = run_playbook(
                    topology,
                    REMOVE_MEMBER,
                    "-i",
                    str(shrunk),
                    "-e",
                    f"etcd_remove_member={','.join(reversed(names))}",
                )
            seconds = round(time.monotonic() - started)
            phases[f"remove {', '.join(reversed(names))}"] = {"seconds": seconds, "writes": writes}
        data = f"/var/lib/etcd/{topology.cluster_vars['etcd_cluster_name']}"
        retired_state = {
            name: (host_of(name).run("systemctl is-active etcd.service").stdout.strip(),
                   host_of(name).run(f"ls {data}").stdout.strip(), host_of(name).file("/etc/etcd/pki").exists)
            for name in [kept_host]
        }  # fmt: skip
    finally:
        for name in new:
            subprocess.run(["podman", "rm", "--force", "--time", "5", name], check=False, capture_output=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"membership-{topology.inventory.parent.parent.name}.json").write_text(
        json.dumps(phases, indent=2) + "\n"
    )

    assert added.returncode == 0, added.stdout[-8000:]
    promoted = "Rejoin | Promote the learner to a voting member once it has caught up"
    assert all(f"{promoted}, {name}" in added.stdout for name in new), added.stdout[-8000:]
    assert at_five == everyone_and(topology, new), at_five
    three = [topology.addresses[m] for m in topology.members]
    five = [*three, *(v["lab_podman_ipv4"] for v in new.values())]
    assert servers_at_five == sorted(f"https://{a}:2379" for a in five), servers_at_five
    assert removed.returncode == 0, removed.stdout[-8000:]
    assert "membership: matches the inventory" in removed.stdout
    assert membership(via) == everyone(topology)
    assert etcd_servers(host_of, apiserver) == sorted(f"https://{a}:2379" for a in three)
    # One member at a time: at most one learner, and the voters went 3, 4, 5, 4, 3.
    assert all(m.learners <= 1 and m.unstarted_voters == 0 for m in watch.seen), watch.seen
    size = len(topology.members)
    assert distinct_voter_counts(watch.seen) == [size, size + 1, size + 2, size + 1, size], watch.seen
    # The client wrote throughout; every write etcd acknowledged is still there.
    for phase, measured in phases.items():
        writes = measured["writes"]
        assert writes["attempts"] > 10 and writes["failed"] == 0 and writes["lost"] == 0, (phase, writes)
    # The removed host that is still there keeps neither a running etcd, nor data, nor keys.
    for name, (state, data_left, keys) in retired_state.items():
        assert state != "active" and data_left in ("", "lost+found") and not keys, (
            name,
            state,
            data_left,
            keys,
        )
