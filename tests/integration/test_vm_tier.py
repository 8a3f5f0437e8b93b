"""The VM tier: a real Debian kernel, which has what this machine's containers lack.

Only the molecule scenario `vm` runs these (`-m vm`); the container scenarios run everything else
(`-m "not vm"`). This first slice shows the tier itself works: the member's kernel has AppArmor and
device-mapper, etcd serves the apiserver container over mTLS, and the firewall drops a stranger.
The controls they enable (AppArmor confinement, LUKS data dirs) build on it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from testinfra.host import Host

from conftest import APISERVER_CREDS, Topology

pytestmark = pytest.mark.vm

HostOf = Callable[[str], Host]
Probe = Callable[..., dict[str, Any]]


def test_members_are_vms(topology: Topology) -> None:
    assert topology.members and all(topology.is_vm(m) for m in topology.members), topology.members


def test_the_kernel_has_apparmor_enabled(topology: Topology, host_of: HostOf) -> None:
    for member in topology.members:
        host = host_of(member)
        assert "apparmor" in host.file("/sys/kernel/security/lsm").content_string.split(","), member
        assert host.run("aa-status --enabled").rc == 0, member


def test_the_kernel_has_device_mapper(topology: Topology, host_of: HostOf) -> None:
    for member in topology.members:
        assert host_of(member).file("/dev/mapper/control").exists, member


def test_the_apiserver_writes_through_the_vm_over_mtls(topology: Topology, probe: Probe) -> None:
    for member in topology.members:
        endpoint = f"https://{topology.addresses[member]}:2379"
        written = probe(
            topology.apiservers[0], "kv", "put", "/vm/tier", "ok", "--endpoint", endpoint, *APISERVER_CREDS
        )
        assert written["served"], written


def test_a_stranger_is_dropped_by_the_vms_firewall(topology: Topology, probe: Probe) -> None:
    for member in topology.members:
        address = topology.addresses[member]
        control = probe(topology.untrusted[0], "tcp", address, "2382", "--timeout", "3")
        assert "refused" in (control["error"] or "").lower(), f"{member} does not answer: {control}"
        dropped = probe(topology.untrusted[0], "tcp", address, "2379", "--timeout", "3")
        assert not dropped["served"] and "timed out" in (dropped["error"] or ""), dropped
