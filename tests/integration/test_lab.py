"""The lab heals what its own tests do to it: `make lab` brings back containers that were restarted,
stopped, or cannot start, and `make lab-down` leaves nothing that stops the next `make lab`.

podman 4.3 (Debian 12) can keep a container's address recorded after a failed start; it then
refuses that address to every container, and the record outlives the network. The leak is made
here with podman itself (scripts/podman_ipam.py moves one record of a running spare container onto
the stopped host's address, and podman removes the spare), then the lab role must start the host.
These run on a network of their own with one throwaway host, so the scenario's cluster is not
touched; the ten restarts of each member run against the cluster, with `make lab` after each.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from testinfra.host import Host

from conftest import (
    APISERVER_CREDS,
    REPO,
    Membership,
    ProbeResult,
    Topology,
    membership,
    podman,
    run_playbook,
    run_site,
    timed_run,
    wait_for_boot,
)

sys.path.insert(0, str(REPO / "scripts"))
import podman_ipam

HostOf = Callable[[str], Host]
IPAM_DB = podman_ipam.DEFAULT_DATABASE


@dataclass(frozen=True)
class ScratchLab:
    inventory: Path
    network: str
    host: str
    address: str


def lab_containers(lab: ScratchLab, state: str) -> subprocess.CompletedProcess[str]:
    """The lab_podman role on the scratch inventory, as `make lab` (started) and `make lab-down` run it."""
    return timed_run(
        f"lab_podman {state}",
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(lab.inventory),
         str(REPO / "tests/integration/playbooks/lab_containers.yml"), "-e", f"lab_podman_state={state}"],
        cwd=REPO,
    )  # fmt: skip


def container_id(name: str) -> str:
    return podman("inspect", "--format", "{{.Id}}", name).stdout.strip()


def holders(network: str) -> dict[str, str]:
    return {a.address: a.container for a in podman_ipam.allocations_in(IPAM_DB.read_bytes(), network)}


def leak_address_of(lab: ScratchLab) -> str:
    """Stop the host and leave its address recorded for a container that no longer exists."""
    podman("stop", "--time", "5", lab.host)
    spare_address = str(ipaddress.ip_address(lab.address) + 1)
    image = podman("inspect", "--format", "{{.ImageName}}", lab.host).stdout.strip()
    spare = podman(
        "run", "--detach", "--rm", "--network", lab.network, "--ip", spare_address, image, "sleep", "600"
    ).stdout.strip()
    try:
        podman_ipam.rename_address(IPAM_DB, lab.network, spare_address, lab.address)
    finally:
        podman("rm", "--force", "--time", "0", spare)
    assert holders(lab.network).get(lab.address) == spare, holders(lab.network)
    return spare


@pytest.fixture(scope="module")
def scratch_lab(tmp_path_factory: pytest.TempPathFactory, topology: Topology) -> Iterator[ScratchLab]:
    """One throwaway container on a network of its own, made and removed by the lab's own role."""
    directory = tmp_path_factory.mktemp("scratch-lab")
    lab = ScratchLab(directory / "hosts.yml", "etcd-lab-heal", "heal-lab-1", "10.90.27.11")
    default_suite = topology.cluster_vars.get("lab_podman_default_suite")
    suite = topology.var(topology.members[0], "lab_podman_suite", default_suite)
    inventory = {
        "all": {
            "vars": {
                "lab_podman_network": lab.network,
                "lab_podman_subnet": "10.90.27.0/24",
                "lab_podman_subnet_v6": "fd90:27::/64",
                "lab_podman_hosts": [lab.host],
                **({"lab_podman_default_suite": suite} if suite else {}),
            },
            "hosts": {
                "localhost": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
                lab.host: {"lab_podman_ipv4": lab.address, "lab_podman_ipv6": "fd90:27::11"},
            },
        }
    }
    lab.inventory.write_text(yaml.safe_dump(inventory))
    made = lab_containers(lab, "started")
    assert made.returncode == 0, made.stdout[-5000:]
    yield lab
    removed = lab_containers(lab, "absent")
    assert removed.returncode == 0, removed.stdout[-5000:]


@pytest.mark.platform_independent
def test_make_lab_starts_a_host_whose_address_a_failed_start_left_recorded(scratch_lab: ScratchLab) -> None:
    lab = scratch_lab
    leak_address_of(lab)
    # The leak is real: podman itself refuses to start the host.
    refused = subprocess.run(["podman", "start", lab.host], capture_output=True, text=True, check=False)
    assert "is already allocated to container ID" in refused.stderr, refused.stderr

    made = lab_containers(lab, "started")

    assert made.returncode == 0, made.stdout[-5000:]
    assert "Free the addresses recorded for containers that are not running, in etcd-lab-heal" in made.stdout
    assert podman("inspect", "--format", "{{.State.Status}}", lab.host).stdout.strip() == "running"
    host_id = container_id(lab.host)
    assert holders(lab.network) == {lab.address: host_id, "fd90:27::11": host_id}
    again = lab_containers(lab, "started")
    assert again.returncode == 0 and "changed=0" in again.stdout, again.stdout[-3000:]


@pytest.mark.platform_independent
def test_make_lab_down_leaves_no_record_that_stops_the_next_make_lab(scratch_lab: ScratchLab) -> None:
    lab = scratch_lab
    leak_address_of(lab)

    removed = lab_containers(lab, "absent")
    assert removed.returncode == 0, removed.stdout[-5000:]
    assert holders(lab.network) == {}, "a record outlived make lab-down"

    made = lab_containers(lab, "started")
    assert made.returncode == 0, made.stdout[-5000:]
    assert podman("inspect", "--format", "{{.State.Status}}", lab.host).stdout.strip() == "running"


@pytest.mark.platform_independent
def test_make_lab_makes_again_a_host_that_cannot_start(scratch_lab: ScratchLab) -> None:
    lab = scratch_lab
    before = container_id(lab.host)
    podman("stop", "--time", "5", lab.host)
    # Its operating system is broken: there is no init to start.
    root = podman("mount", lab.host).stdout.strip()
    Path(root, "sbin/init").unlink()
    podman("unmount", lab.host)
    refused = subprocess.run(["podman", "start", lab.host], capture_output=True, text=True, check=False)
    assert refused.returncode != 0, refused.stdout

    made = lab_containers(lab, "started")

    assert made.returncode == 0, made.stdout[-5000:]
    assert "Remove the containers that could not start" in made.stdout
    assert container_id(lab.host) != before, "the broken container was kept"
    assert podman("inspect", "--format", "{{.State.Status}}", lab.host).stdout.strip() == "running"
    assert json.loads(podman("inspect", lab.host).stdout)[0]["Config"]["Hostname"] == lab.host


# --- the cluster's members, restarted as the tests restart them --------------------------------

RESTARTS_IN_A_ROW = 10


@pytest.mark.changes_cluster(order=3)
@pytest.mark.platform_independent
def test_each_member_restarted_ten_times_in_a_row_comes_back_and_make_lab_converges(
    topology: Topology, host_of: HostOf, probe: Callable[..., ProbeResult], marker: str
) -> None:
    """`podman restart`, as the tests simulate a reboot; one member at a time, so the cluster keeps
    quorum even where every member keeps its data in RAM (each restart empties it)."""
    everyone = Membership(
        voters=len(topology.members), learners=0, unstarted_voters=0, names=tuple(sorted(topology.members))
    )
    for member in topology.members:
        for attempt in range(1, RESTARTS_IN_A_ROW + 1):
            argv = ["podman", "restart", member]
            restarted = subprocess.run(argv, capture_output=True, text=True, check=False)
            assert restarted.returncode == 0, f"{member}, restart {attempt}: {restarted.stderr}"
            assert wait_for_boot(host_of(member)) == "running", f"{member}, restart {attempt}"

        made = run_playbook(topology, REPO / "playbooks/lab_up.yml")
        converged = run_site(topology)

        assert made.returncode == 0, f"{member}: {made.stdout[-5000:]}"
        assert converged.returncode == 0, f"{member}: {converged.stdout[-8000:]}"
        via = next(m for m in topology.members if m != member)
        assert membership(via) == everyone, member
        # What was written before is served by the member that was restarted (a linearizable
        # read through it: it has caught up, whatever its storage). A restarted container has a
        # new MAC address that the apiserver's neighbour cache learns within seconds (see
        # test_storage.health), so a read that times out is asked again for a while.
        endpoint = ("--endpoint", f"https://{topology.addresses[member]}:2379")
        deadline = time.monotonic() + 30
        while True:
            got = probe(topology.apiservers[0], "kv", "get", "/storage/marker", *endpoint, *APISERVER_CREDS)
            if got["served"] or time.monotonic() >= deadline:
                break
            time.sleep(1)
        assert got["served"] and json.loads(got["body"]) == [marker], (member, got)
