"""The nftables lockdown: only apiservers (and members) reach the client port, only members the peer
port, nobody but loopback the metrics port; the host's own rules are left alone.

A dropped connection times out, while a closed port answers at once with a reset: each "blocked"
assertion is paired with a control to a closed port on the same host, so a timeout cannot come from
a host that is down or unreachable.
"""

from __future__ import annotations

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
from testinfra.host import Host

from conftest import APISERVER_CREDS, PROBE_PATH, Rebooted, Topology, run_site

HostOf = Callable[[str], Host]
Probe = Callable[..., dict[str, Any]]

CLIENT, PEER, METRICS = 2379, 2380, 2381
CLOSED = 2382  # nothing listens there and the etcd firewall does not cover it
TABLE = "etcd_firewall"
# Long enough for a reset to come back from a loaded container, short enough for many probes.
CONNECT_TIMEOUT = "1.5"


def connect(probe: Probe, on: str, address: str, port: int) -> dict[str, Any]:
    return probe(on, "tcp", address, str(port), "--timeout", CONNECT_TIMEOUT)


def assert_dropped(probe: Probe, on: str, address: str, port: int) -> None:
    control = connect(probe, on, address, CLOSED)
    assert "refused" in (control["error"] or "").lower(), f"control: {address} does not answer: {control}"
    outcome = connect(probe, on, address, port)
    assert not outcome["served"], f"{on} reached {address}:{port}: {outcome}"
    assert "timed out" in (outcome["error"] or ""), f"expected a silent drop: {outcome}"


def assert_connects(probe: Probe, on: str, address: str, port: int) -> None:
    outcome = connect(probe, on, address, port)
    assert outcome["served"], f"{on} cannot reach {address}:{port}: {outcome}"


def table(host: Host, name: str = TABLE) -> str:
    return str(host.run(f"nft --stateless list table inet {name}").stdout)


def changed_count(output: str, host: str) -> int:
    match = re.search(rf"^{re.escape(host)}\s*: ok=\d+\s+changed=(\d+)", output, re.MULTILINE)
    assert match, f"no recap line for {host}:\n{output[-3000:]}"
    return int(match.group(1))


# --- who reaches what -------------------------------------------------------------------------


@pytest.mark.any_tier
def test_an_untrusted_host_reaches_no_etcd_port(topology: Topology, probe: Probe) -> None:
    attacker = topology.untrusted[0]
    for member in topology.members:
        for port in (CLIENT, PEER, METRICS):
            assert_dropped(probe, attacker, topology.addresses[member], port)


@pytest.mark.any_tier
def test_an_apiserver_reaches_the_client_port_only(topology: Topology, probe: Probe) -> None:
    apiserver = topology.apiservers[0]
    for member in topology.members:
        address = topology.addresses[member]
        endpoint = f"https://{address}:{CLIENT}"
        key = f"/firewall/{member}"
        written = probe(apiserver, "kv", "put", key, "ok", "--endpoint", endpoint, *APISERVER_CREDS)
        assert written["served"], written
        for port in (PEER, METRICS):
            assert_dropped(probe, apiserver, address, port)


def test_members_reach_each_others_peer_port(topology: Topology, probe: Probe) -> None:
    for member in topology.members:
        for other in topology.members:
            if other != member:
                assert_connects(probe, member, topology.addresses[other], PEER)


def ipv6_of(topology: Topology, host: str) -> str:
    address = topology.var(host, "lab_podman_ipv6")
    assert address, (
        f"{host} has no IPv6 address: the scenario's network must be dual stack (lab_podman_subnet_v6)"
    )
    return str(address)


@contextmanager
def listening_on_ipv6(topology: Topology, member: str, ports: tuple[int, ...]) -> Iterator[str]:
    """A listener of the test's own at etcd's ports on the member's IPv6 address (etcd listens on its
    IPv4 address and loopback only), so that a connection there shows the firewall's verdict: made
    when the table accepts it, silence when it drops it. Yields the address."""
    address, marker = ipv6_of(topology, member), f"etcd-test-listener-{uuid.uuid4().hex[:8]}"
    script = (
        "import socket, threading, sys\n"
        "def serve(s):\n"
        "    while True:\n"
        "        s.accept()[0].close()\n"
        f"for port in {list(ports)}:\n"
        "    s = socket.socket(socket.AF_INET6)\n"
        "    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"    s.bind(('{address}', port))\n"
        "    s.listen(16)\n"
        "    threading.Thread(target=serve, args=(s,), daemon=True).start()\n"
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
            pytest.fail(f"the IPv6 listener on {member} did not start")
        yield address
    finally:
        subprocess.run(["podman", "exec", member, "pkill", "-f", marker], check=False)
        subprocess.run(["podman", "exec", member, "rm", "-f", f"/run/{marker}"], check=False)


def test_over_ipv6_the_same_sources_get_in_and_no_other(topology: Topology, probe: Probe) -> None:
    """The table's IPv6 sets, tried with IPv6 packets: the apiserver and the members in where the
    inventory lets them, the untrusted host nowhere (each drop paired with a closed-port control)."""
    member, other = topology.members[:2]
    apiserver, attacker = topology.apiservers[0], topology.untrusted[0]
    with listening_on_ipv6(topology, member, (CLIENT, PEER, METRICS)) as address:
        assert_connects(probe, apiserver, address, CLIENT)
        assert_connects(probe, other, address, CLIENT)
        assert_connects(probe, other, address, PEER)
        assert_dropped(probe, apiserver, address, PEER)
        assert_dropped(probe, other, address, METRICS)  # loopback only
        for port in (CLIENT, PEER, METRICS):
            assert_dropped(probe, attacker, address, port)


def test_the_hosts_own_firewall_table_is_left_alone(topology: Topology, host_of: HostOf) -> None:
    # playbooks/lab_up.yml made it before the first run; converge and idempotence have run since.
    for member in topology.members:
        assert 'comment "host firewall: ssh"' in table(host_of(member), "host_firewall"), member


def test_the_table_is_loaded_at_boot_before_etcd(topology: Topology, host_of: HostOf) -> None:
    for member in topology.members:
        host = host_of(member)
        assert host.service("etcd-firewall.service").is_enabled, member
        requires = host.check_output("systemctl show -p Requires -p After --value etcd.service")
        assert "etcd-firewall.service" in requires, f"{member}: etcd does not wait for its firewall"


# --- changes to a running cluster -------------------------------------------------------------


@pytest.fixture
def held_writes(topology: Topology) -> Iterator[Callable[[], dict[str, Any]]]:
    """An apiserver writing over one long-lived connection, never re-opened; call it to stop."""
    apiserver, member = topology.apiservers[0], topology.members[0]
    stop_file = f"/tmp/stop-writes-{uuid.uuid4()}"
    writer = subprocess.Popen(
        [
            "podman", "exec", apiserver, "python3", PROBE_PATH, "watch-writes", "--one-connection",
            "--endpoints", f"https://{topology.addresses[member]}:{CLIENT}", "--stop-file", stop_file,
            *APISERVER_CREDS,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip

    def stop() -> dict[str, Any]:
        subprocess.run(["podman", "exec", apiserver, "touch", stop_file], check=True)
        stdout, _ = writer.communicate(timeout=60)
        result: dict[str, Any] = json.loads(stdout)
        return result

    yield stop
    if writer.poll() is None:
        stop()


@pytest.mark.changes_cluster
@pytest.mark.platform_independent
def test_a_new_apiserver_is_let_in_and_out_without_cutting_connections(
    topology: Topology, probe: Probe, held_writes: Callable[[], dict[str, Any]], tmp_path: Path
) -> None:
    newcomer = topology.untrusted[0]
    address = topology.addresses[topology.members[0]]
    extra = tmp_path / "newcomer.yml"
    extra.write_text(f"all:\n  children:\n    kube_control_plane:\n      hosts:\n        {newcomer}: {{}}\n")

    added = run_site(topology, "--tags", "firewall", "-i", str(extra))
    let_in = connect(probe, newcomer, address, CLIENT)
    removed = run_site(topology, "--tags", "firewall")
    writes = held_writes()

    assert added.returncode == 0, added.stdout[-5000:]
    assert removed.returncode == 0, removed.stdout[-5000:]
    assert let_in["served"], f"the new apiserver {newcomer} was not let in: {let_in}"
    assert_dropped(probe, newcomer, address, CLIENT)
    assert writes["attempts"] > 10 and writes["failed"] == 0, f"the open connection was cut: {writes}"


@pytest.mark.changes_cluster
def test_check_mode_reports_a_deleted_rule_and_a_run_restores_it(
    topology: Topology, host_of: HostOf, probe: Probe
) -> None:
    member, apiserver = topology.members[0], topology.apiservers[0]
    host = host_of(member)
    wanted = table(host)
    handles = host.check_output(f"nft --handle list chain inet {TABLE} input")
    handle = re.search(r"tcp dport 2379 ip saddr @clients_v4 accept # handle (\d+)", handles)
    assert handle, handles
    host.check_output(f"nft delete rule inet {TABLE} input handle {handle.group(1)}")
    assert_dropped(probe, apiserver, topology.addresses[member], CLIENT)

    checked = run_site(topology, "--tags", "firewall", "--check", "--diff")
    drifted = table(host)
    repaired = run_site(topology, "--tags", "firewall")

    assert checked.returncode == 0, checked.stdout[-5000:]
    assert changed_count(checked.stdout, member) == 1, checked.stdout[-5000:]
    assert "+\t\ttcp dport 2379 ip saddr @clients_v4 accept" in checked.stdout
    assert all(changed_count(checked.stdout, m) == 0 for m in topology.members[1:])
    assert drifted != wanted, "check mode changed the live table"
    assert repaired.returncode == 0, repaired.stdout[-5000:]
    assert changed_count(repaired.stdout, member) == 1
    assert table(host) == wanted
    assert_connects(probe, apiserver, topology.addresses[member], CLIENT)


@pytest.mark.changes_cluster(order=1)
def test_a_rebooted_member_loads_its_table_before_etcd(
    topology: Topology, host_of: HostOf, probe: Probe, rebooted_member: Rebooted
) -> None:
    member = rebooted_member.member
    host = host_of(member)
    assert rebooted_member.boot_state == "running", f"{member} did not boot cleanly: {rebooted_member}"

    assert "tcp dport 2380 ip saddr @peers_v4 accept" in table(host)
    loaded = int(host.check_output("systemctl show -p ActiveEnterTimestampMonotonic --value etcd-firewall"))
    # The first thing systemd logs for etcd after the restart is its start; the container shares
    # the host's monotonic clock.
    entries = host.check_output("journalctl -u etcd.service -o json --output-fields=MESSAGE --no-pager")
    etcd_first = min(
        stamp
        for stamp in (int(json.loads(line)["__MONOTONIC_TIMESTAMP"]) for line in entries.splitlines())
        if stamp > rebooted_member.restarted_after_us
    )
    assert rebooted_member.restarted_after_us < loaded < etcd_first, (
        f"restart at {rebooted_member.restarted_after_us} µs, firewall loaded at {loaded} µs, "
        f"etcd's first start at {etcd_first} µs"
    )
    # Whether etcd runs or (on a RAM disk) waits to be rejoined, its ports are closed to strangers.
    # The restarted container has a new MAC address: the attacker's stale neighbour entry for it
    # blackholes the first packets for a few seconds, so wait for the control port's reset first.
    address = topology.addresses[member]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        control = connect(probe, topology.untrusted[0], address, CLOSED)
        if "refused" in (control["error"] or "").lower():
            break
    assert_dropped(probe, topology.untrusted[0], address, CLIENT)


# --- the host's own firewall service ----------------------------------------------------------


@pytest.fixture
def host_tables_restored(topology: Topology, host_of: HostOf) -> Iterator[Host]:
    """The first member; its own (non-etcd) tables are put back afterwards, as its admin would."""
    host = host_of(topology.members[0])
    saved = host.check_output("nft list ruleset")
    yield host
    host.run(f"nft list table inet {TABLE} >/dev/null || systemctl restart etcd-firewall")
    for name in re.findall(r"^table inet (\w+)", saved, re.MULTILINE):
        if name != TABLE and host.run(f"nft list table inet {name}").rc != 0:
            body = re.search(rf"^table inet {name} {{.*?^}}", saved, re.MULTILINE | re.DOTALL)
            assert body, saved
            host.run_expect([0], "printf '%%s\\n' %s | nft -f -", body.group(0))


@pytest.mark.changes_cluster
def test_restarting_reloading_stopping_or_starting_nftables_keeps_etcds_table(
    topology: Topology, probe: Probe, host_tables_restored: Host
) -> None:
    # Debian's nftables.service flushes the whole ruleset on each of these; an administrator does
    # them routinely after editing the host's firewall.
    host, member = host_tables_restored, topology.members[0]
    wanted = table(host)
    attacker, address = topology.untrusted[0], topology.addresses[member]
    for action in ("restart", "reload", "stop", "start"):
        host.run_expect([0], f"systemctl {action} nftables.service")
        assert table(host) == wanted, f"after `systemctl {action} nftables` the table is not the same"
        assert host.service("etcd-firewall.service").is_running
        if action in ("restart", "reload"):
            for port in (CLIENT, PEER, METRICS):
                assert_dropped(probe, attacker, address, port)


@pytest.mark.changes_cluster
@pytest.mark.platform_independent
def test_the_summary_names_a_member_whose_table_is_gone(
    topology: Topology, host_tables_restored: Host
) -> None:
    host, member = host_tables_restored, topology.members[0]
    # What a "flush ruleset" by hand leaves: etcd-firewall.service active, the table gone.
    host.check_output(f"nft delete table inet {TABLE}")
    missing = run_site(topology, "--check", "--tags", "summary")
    host.check_output("systemctl restart etcd-firewall.service")

    assert missing.returncode == 0, missing.stdout[-5000:]
    text = " ".join(missing.stdout.split())
    assert f"WARNING: the firewall table inet {TABLE} is NOT loaded on {member}:" in text, text[-5000:]
    assert "loaded on every member" not in text
