"""etcd's data at rest: members on tmpfs keep it in RAM only, a member that lost it never starts by
itself, and a re-run of the play rejoins it while the cluster keeps serving.

The marker test searches the container's own storage on the host (its overlay upper directory)
for a value written through etcd: never found for tmpfs members, always found for disk members
and for a control file, so a search that finds nothing cannot pass for one that could not look.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest
from testinfra.host import Host

from conftest import (
    APISERVER_CREDS,
    REPO,
    ChangeRun,
    MembershipWatch,
    Rebooted,
    Topology,
    change_while_writing,
    podman,
    run_site,
    storage_mode,
    wait_for_boot,
    watching_membership,
)

HostOf = Callable[[str], Host]
Probe = Callable[..., dict[str, Any]]
RESULTS = REPO / "results"
REFUSAL = "etcd refuses to start"


def data_dir(topology: Topology) -> str:
    return f"/var/lib/etcd/{topology.cluster_vars['etcd_cluster_name']}"


def members_in(topology: Topology, mode: str) -> list[str]:
    return [m for m in topology.members if storage_mode(topology, m) == mode]


def upper_dir(container: str) -> str:
    """Where the host keeps everything the container wrote to its disk."""
    return subprocess.run(
        ["podman", "inspect", "--format", "{{.GraphDriver.Data.UpperDir}}", container],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def files_holding(directory: str, text: str) -> list[str]:
    found = subprocess.run(["grep", "-rlF", text, directory], capture_output=True, text=True, check=False)
    assert found.returncode in (0, 1), found.stderr
    return found.stdout.splitlines()


def changed_counts(output: str) -> dict[str, int]:
    return {h: int(c) for h, c in re.findall(r"^(\S+)\s*: ok=\d+\s+changed=(\d+)", output, re.MULTILINE)}


def health(probe: Probe, topology: Topology, member: str, patience_seconds: float = 0) -> dict[str, Any]:
    """The member's /health as the apiserver sees it, asked again on a network error for a while.

    A restarted container comes back with a new MAC address, and the apiserver's neighbour cache
    keeps the old one for a few seconds: its first request can time out (seen after the power
    loss below: one probe of three, 5 s, then every probe served). Real hosts keep their MAC, and
    an apiserver retries; so do the tests that restart members.
    """
    deadline = time.monotonic() + patience_seconds
    while True:
        served = probe(
            topology.apiservers[0],
            "request",
            f"https://{topology.addresses[member]}:2379/health",
            *APISERVER_CREDS,
        )
        if served["served"] or time.monotonic() >= deadline:
            return served
        time.sleep(1)


def read_marker(probe: Probe, topology: Topology, member: str) -> list[str]:
    """The marker's values as read through one member (a linearizable read: applied there)."""
    endpoint = ("--endpoint", f"https://{topology.addresses[member]}:2379")
    got = probe(topology.apiservers[0], "kv", "get", "/storage/marker", *endpoint, *APISERVER_CREDS)
    assert got["served"], got
    values: list[str] = json.loads(got["body"])
    return values


# --- where the data lives ---------------------------------------------------------------------


def test_tmpfs_members_keep_their_data_on_a_private_ram_disk(topology: Topology, host_of: HostOf) -> None:
    members = members_in(topology, "tmpfs")
    assert members, "the lab and both scenarios put at least one member on tmpfs"
    for member in members:
        host = host_of(member)
        mount = json.loads(host.check_output(f"findmnt --json --mountpoint {data_dir(topology)}"))
        fs = mount["filesystems"][0]
        options = set(fs["options"].split(","))
        assert fs["fstype"] == "tmpfs", f"{member}: {fs}"
        assert {"mode=700", "nosuid", "nodev", "noexec", "noswap"} <= options, f"{member}: {options}"
        assert host.file(data_dir(topology)).mode == 0o700
        assert host.file(data_dir(topology)).user == "etcd" and host.file(data_dir(topology)).group == "etcd"
        # etcd's unit needs the mount: without it etcd would start on the bare directory.
        needs = host.check_output("systemctl show -p RequiresMountsFor -p Requires --value etcd.service")
        assert data_dir(topology) in needs, f"{member}: {needs}"


def test_disk_members_keep_a_private_plain_directory(topology: Topology, host_of: HostOf) -> None:
    members = members_in(topology, "disk")
    if not members:
        pytest.skip("every member of this topology is on tmpfs")
    for member in members:
        host = host_of(member)
        assert host.run(f"findmnt --mountpoint {data_dir(topology)}").rc == 1, f"{member}: a mount"
        directory = host.file(data_dir(topology))
        assert (directory.mode, directory.user, directory.group) == (0o700, "etcd", "etcd"), member


def test_a_value_written_through_etcd_never_reaches_the_disk_of_a_tmpfs_member(
    topology: Topology, host_of: HostOf, probe: Probe, marker: str
) -> None:
    for member in topology.members:
        assert marker in read_marker(probe, topology, member), member
    for member in topology.members:
        control = "/var/tmp/storage-search-control"
        host_of(member).check_output(f"echo {marker} > {control}")
        try:
            holding = files_holding(upper_dir(member), marker)
        finally:
            host_of(member).check_output(f"rm -f {control}")
        on_disk = {path.split("/diff", 1)[-1] for path in holding}
        assert control in on_disk, f"{member}: the search cannot see the container's disk: {holding}"
        etcd_files = on_disk - {control}
        if storage_mode(topology, member) == "tmpfs":
            assert not etcd_files, f"{member} wrote the marker to disk: {sorted(etcd_files)}"
        else:
            # etcd's WAL and database hold values in clear: the search finds them on a disk member.
            assert any(p.startswith(data_dir(topology)) for p in etcd_files), f"{member}: {holding}"


def test_luks_in_a_container_stops_before_any_change(topology: Topology) -> None:
    result = run_site(topology, "-e", "etcd_storage_mode=luks")
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0, output[-3000:]
    assert "needs the kernel's device-mapper (dm-crypt)" in output, output[-3000:]
    members_play = result.stdout.split("PLAY [Members", 1)[-1]
    ran = re.findall(r"^TASK \[([^\]]+)\]", members_play, re.MULTILINE)
    assert ran and all(t.startswith("etcd_storage : ") for t in ran), f"more than the checks ran: {ran}"
    assert set(changed_counts(result.stdout).values()) == {0}, result.stdout[-3000:]


# --- a member that lost its data --------------------------------------------------------------


@pytest.mark.changes_cluster(order=1)
def test_an_emptied_member_refuses_to_start_and_says_why(
    topology: Topology, host_of: HostOf, probe: Probe, rebooted_member: Rebooted
) -> None:
    member = rebooted_member.member
    assert storage_mode(topology, member) == "tmpfs", "the rebooted member must be one on tmpfs"
    host = host_of(member)
    assert rebooted_member.boot_state == "running", rebooted_member
    assert host.run(f"test -e {data_dir(topology)}/member").rc != 0, "the RAM disk survived the reboot"
    assert host.run(f"findmnt --mountpoint {data_dir(topology)} -no FSTYPE").stdout.strip() == "tmpfs"
    # systemd retries every 5 s; give it time to try more than once, then look.
    journal = ""
    for _ in range(30):
        journal = host.run("journalctl -u etcd.service --no-pager -o cat").stdout
        if journal.count(REFUSAL) >= 2:
            break
        host.run("sleep 1")
    assert journal.count(REFUSAL) >= 2, journal[-3000:]
    assert host.run("systemctl is-active etcd.service").stdout.strip() != "active"
    others = [m for m in topology.members if m != member]
    for other in others:
        served = health(probe, topology, other)
        assert served["served"] and '"health":"true"' in served["body"], served


@pytest.fixture(scope="module")
def rejoin_watched(
    topology: Topology, host_of: HostOf, rebooted_member: Rebooted
) -> tuple[ChangeRun, MembershipWatch]:
    """The rejoining run, under a client's writes and with etcd's membership read throughout."""
    via = next(m for m in topology.members if m != rebooted_member.member)
    with watching_membership(via) as watch:
        run = change_while_writing(topology, host_of)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"rejoin-{topology.inventory.parent.parent.name}.json").write_text(
        json.dumps({"member": rebooted_member.member, "writes": run.writes}, indent=2) + "\n"
    )
    return run, watch


@pytest.fixture(scope="module")
def rejoin(rejoin_watched: tuple[ChangeRun, MembershipWatch]) -> ChangeRun:
    return rejoin_watched[0]


@pytest.mark.changes_cluster(order=2)
def test_a_rerun_rejoins_the_emptied_member_while_writes_go_on(
    rejoin: ChangeRun, rebooted_member: Rebooted
) -> None:
    assert f"Rejoin | Add the member to the cluster as a learner, {rebooted_member.member}" in rejoin.output
    assert rejoin.writes["attempts"] > 10, rejoin.writes
    # Removing and adding a member that is down changes no quorum: no write may fail at all.
    assert rejoin.writes["failed"] == 0, rejoin.writes


@pytest.mark.changes_cluster(order=2)
def test_the_emptied_member_comes_back_as_a_learner_and_only_then_votes(
    topology: Topology, rejoin_watched: tuple[ChangeRun, MembershipWatch]
) -> None:
    _, watch = rejoin_watched
    seen = watch.seen
    assert seen, f"the membership was never read ({watch.failed_reads} failed reads)"
    everyone = len(topology.members)
    # Before: the emptied member's stale entry still votes; after: all vote again, nothing pending.
    assert (seen[0].voters, seen[0].learners) == (everyone, 0), seen
    assert (seen[-1].voters, seen[-1].learners, seen[-1].unstarted_voters) == (everyone, 0, 0), seen
    # In between it was a learner (never more than one), while the others went on voting: a
    # pending member never counted toward quorum.
    assert any(m.learners == 1 for m in seen), f"no learner was ever seen: {seen}"
    assert all(m.learners <= 1 and m.unstarted_voters == 0 for m in seen), seen
    assert all(m.voters >= everyone - 1 for m in seen), seen


@pytest.mark.changes_cluster(order=2)
def test_the_rejoined_member_serves_the_marker_and_all_are_healthy(
    topology: Topology, probe: Probe, marker: str, rejoin: ChangeRun, rebooted_member: Rebooted
) -> None:
    assert marker in read_marker(probe, topology, rebooted_member.member)
    for member in topology.members:
        served = health(probe, topology, member)
        assert served["served"] and '"health":"true"' in served["body"], served


@pytest.mark.changes_cluster(order=2)
def test_every_member_holds_the_same_data_after_the_rejoin(
    topology: Topology, host_of: HostOf, rejoin: ChangeRun
) -> None:
    # etcd's own consistency check: the hash of the key-value store up to one revision, on each
    # member. A member that joined from a half-written snapshot would differ.
    etcdctl = (
        "etcdctl --cacert=/etc/etcd/pki/ca.crt --cert=/etc/etcd/pki/admin.crt --key=/etc/etcd/pki/admin.key"
    )
    endpoints = ",".join(f"https://{topology.addresses[m]}:2379" for m in topology.members)
    host = host_of(topology.members[0])
    status = json.loads(host.check_output(f"{etcdctl} --endpoints={endpoints} endpoint status -w json"))
    revision = min(int(s["Status"]["header"]["revision"]) for s in status)
    hashkv = f"{etcdctl} --endpoints={endpoints} endpoint hashkv --rev={revision} -w json"
    hashes = json.loads(host.check_output(hashkv))
    assert len(hashes) == len(topology.members), hashes
    assert len({h["HashKV"]["hash"] for h in hashes}) == 1, hashes


@pytest.mark.changes_cluster(order=2)
@pytest.mark.platform_independent
def test_a_further_run_after_the_rejoin_changes_nothing(topology: Topology, rejoin: ChangeRun) -> None:
    result = run_site(topology)
    assert result.returncode == 0, result.stdout[-5000:]
    counts = changed_counts(result.stdout)
    assert counts and set(counts.values()) == {0}, counts


# --- every member lost its data ----------------------------------------------------------------


@pytest.fixture(scope="module")
def power_loss(topology: Topology, host_of: HostOf, marker: str) -> list[str]:
    """Restart every member's container at once: all RAM disks come back empty."""
    members = topology.members
    if members_in(topology, "tmpfs") != members:
        pytest.skip("a power loss empties RAM disks only; this scenario keeps data on disk")
    podman("restart", *members)
    states = [wait_for_boot(host_of(m)) for m in members]
    assert set(states) == {"running"}, states
    return members


@pytest.mark.changes_cluster(order=4)
def test_after_every_member_lost_its_data_the_play_refuses_to_found_an_empty_cluster(
    topology: Topology, host_of: HostOf, power_loss: list[str]
) -> None:
    refused = run_site(topology)
    output = " ".join((refused.stdout + refused.stderr).split())
    assert refused.returncode != 0, output[-3000:]
    assert "carry the mark of its founding" in output, output[-3000:]
    for member in power_loss:
        host = host_of(member)
        assert host.run("systemctl is-active etcd.service").stdout.strip() != "active", member
        assert host.run(f"test -e {data_dir(topology)}/member").rc != 0, f"{member} holds data again"


@pytest.mark.changes_cluster(order=4)
def test_asked_explicitly_the_play_founds_a_new_empty_cluster(
    topology: Topology, probe: Probe, power_loss: list[str]
) -> None:
    refounded = run_site(topology, "-e", "etcd_allow_refounding=true")
    assert refounded.returncode == 0, refounded.stdout[-5000:]
    for member in power_loss:
        served = health(probe, topology, member, patience_seconds=30)
        assert served["served"] and '"health":"true"' in served["body"], (served, refounded.stdout[-3000:])
    # The marker written before the power loss is gone: it was a real loss, and this a new cluster.
    assert read_marker(probe, topology, power_loss[0]) == []
