"""The VM tier: a real Debian kernel, which has what this machine's containers lack.

Only the molecule scenario `vm` runs these (`-m vm`); the container scenarios run everything else
(`-m "not vm"`). This first slice shows the tier itself works: the member's kernel has AppArmor and
device-mapper, etcd serves the apiserver container over mTLS, and the firewall drops a stranger.
Then the LUKS data directory (key source controller): an opened LUKS2 volume, no key on the VM's
disk, no value in clear on the raw data disk, locked after a reboot until the play unlocks it.
Beside it, two small volumes in files with the key sources tang (a Tang server in a container)
and keyfile: each opens by itself at boot, tang only while its server answers.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from testinfra.host import Host

from conftest import (
    APISERVER_CREDS,
    REPO,
    VM_DIR,
    VM_SSH_OPTIONS,
    Topology,
    assert_summary_tells_the_truth_about_apparmor,
    run_playbook,
    run_site,
    unvault,
)

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


# --- the data directory on LUKS, its key on the controller only -------------------------------

LUKS_NAME = "etcd-data"


def vm_disk(member: str, name: str) -> Path:
    return VM_DIR / "run" / member / name


def controller_key(topology: Topology, member: str) -> str:
    """The member's LUKS key, decrypted from the controller's vault file as the play does."""
    key_dir = REPO / ".lab/luks" / str(topology.cluster_vars["etcd_cluster_name"])
    return unvault(key_dir / f"{member}.key.vault").decode().strip()


def grep_file(path: Path, needle: bytes) -> bool:
    return subprocess.run(["grep", "-qaF", needle, str(path)], check=False).returncode == 0


def test_the_data_dir_is_an_opened_luks2_volume(topology: Topology, host_of: HostOf) -> None:
    data_dir = f"/var/lib/etcd/{topology.cluster_vars['etcd_cluster_name']}"
    for member in topology.members:
        host = host_of(member)
        assert host.check_output(f"findmnt -no SOURCE --mountpoint {data_dir}") == f"/dev/mapper/{LUKS_NAME}"
        assert host.check_output(f"lsblk -no TYPE /dev/mapper/{LUKS_NAME}") == "crypt"
        status = host.check_output(f"cryptsetup status {LUKS_NAME}")
        assert "type:    LUKS2" in status and "device:  /dev/vdb" in status, status
        directory = host.file(data_dir)
        assert (directory.mode, directory.user, directory.group) == (0o700, "etcd", "etcd")


def test_no_luks_key_is_left_on_the_vm(topology: Topology, host_of: HostOf) -> None:
    for member in topology.members:
        host = host_of(member)
        key = controller_key(topology, member)
        entry = host.run(f"grep -s '^{LUKS_NAME}[[:space:]]' /etc/crypttab")
        assert entry.rc != 0, f"a crypttab entry would unlock it at boot: {entry.stdout}"
        host.check_output("sync")
        # The VM's whole root disk as the host stores it: the key must be nowhere on it.
        assert not grep_file(vm_disk(member, "root.qcow2"), key.encode()), f"{member}: key on disk"
        # Control: a string written to the same disk is found there by the same search.
        control = f"control-{uuid.uuid4()}"
        host.check_output(f"echo {control} > /var/tmp/search-control && sync")
        assert grep_file(vm_disk(member, "root.qcow2"), control.encode()), "the search cannot see the disk"


def test_a_value_written_through_etcd_is_not_on_the_raw_data_disk(
    topology: Topology, host_of: HostOf, probe: Probe, marker: str
) -> None:
    for member in topology.members:
        host_of(member).check_output("sync")
        raw = vm_disk(member, "data.raw")
        assert grep_file(raw, b"LUKS\xba\xbe"), f"{raw} holds no LUKS header: wrong file?"
        assert not grep_file(raw, marker.encode()), f"{member}: the marker is on the raw data disk in clear"
        endpoint = ("--endpoint", f"https://{topology.addresses[member]}:2379")
        got = probe(topology.apiservers[0], "kv", "get", "/storage/marker", *endpoint, *APISERVER_CREDS)
        assert got["served"] and marker in json.loads(got["body"]), got


# --- the key sources tang and keyfile, each on a volume in a file (a loop device) ---------------

KEY_SOURCES = ("tang", "keyfile")


def volume_file(source: str) -> str:
    return f"/var/lib/etcd-{source}.luks"


def luks_uuid(host: Host, source: str) -> str:
    """crypttab names a volume in a file by its UUID: a loop unit presents the file at boot."""
    uuid_: str = host.check_output(f"blkid --probe --output value --match-tag UUID {volume_file(source)}")
    assert uuid_ and host.service(f"etcd-{source}-loop.service").is_enabled, source
    return uuid_


# Session-wide: the tests that change the cluster run last (conftest), so this module's tests are
# split in two groups with test_apparmor's between them, and a module-scoped fixture ran its playbook
# (five minutes on the emulated VM) again for the second group.
@pytest.fixture(scope="session")
def key_source_volumes(topology: Topology, host_of: HostOf) -> dict[str, str]:
    """Open a volume with each of the key sources tang and keyfile; a marker file in each."""
    result = run_playbook(topology, REPO / "tests/integration/playbooks/luks_key_sources.yml")
    assert result.returncode == 0, result.stdout[-5000:]
    host = host_of(topology.members[0])
    markers = {}
    for source in KEY_SOURCES:
        markers[source] = f"marker-{source}-{uuid.uuid4()}"
        host.check_output(f"echo {markers[source]} > /srv/etcd-{source}/marker && sync")
    return markers


def test_each_key_source_opens_a_luks2_volume_in_a_file(
    topology: Topology, host_of: HostOf, key_source_volumes: dict[str, str]
) -> None:
    host = host_of(topology.members[0])
    for source in KEY_SOURCES:
        assert (
            host.check_output(f"findmnt -no SOURCE --mountpoint /srv/etcd-{source}")
            == f"/dev/mapper/etcd-{source}"
        )
        status = host.check_output(f"cryptsetup status etcd-{source}")
        assert "type:    LUKS2" in status and f"loop:    {volume_file(source)}" in status, status
        backing = host.file(volume_file(source))
        assert (backing.mode, backing.user) == (0o600, "root"), source


def test_a_file_written_into_a_file_backed_volume_is_not_in_the_file(
    topology: Topology, host_of: HostOf, key_source_volumes: dict[str, str]
) -> None:
    host = host_of(topology.members[0])
    for source, marker in key_source_volumes.items():
        assert host.run(f"grep -qaF LUKS {volume_file(source)}").rc == 0, "the search cannot see the file"
        assert host.run(f"grep -qaF {marker} {volume_file(source)}").rc == 1, f"{source}: marker in clear"


def test_the_key_file_is_readable_by_root_only_and_named_in_crypttab(
    topology: Topology, host_of: HostOf, key_source_volumes: dict[str, str]
) -> None:
    host = host_of(topology.members[0])
    key_file = "/etc/cryptsetup-keys.d/etcd-keyfile.key"
    key, directory = host.file(key_file), host.file("/etc/cryptsetup-keys.d")
    assert (key.mode, key.user, key.size) == (0o600, "root", 64)
    assert (directory.mode, directory.user) == (0o700, "root")
    # The attack: etcd's own user (what a compromised etcd runs as) reads the key.
    stolen = host.run(f"runuser -u etcd -- cat {key_file}")
    assert stolen.rc != 0 and "Permission denied" in stolen.stderr, stolen.stderr
    assert host.check_output("grep '^etcd-keyfile[[:space:]]' /etc/crypttab").split() == [
        "etcd-keyfile", f"UUID={luks_uuid(host, 'keyfile')}", key_file, "luks,nofail,timeout=10min"
    ]  # fmt: skip


def test_the_tang_volume_opens_only_while_its_tang_server_answers(
    topology: Topology, host_of: HostOf, key_source_volumes: dict[str, str]
) -> None:
    host, tang = host_of(topology.members[0]), host_of(topology.tang_servers[0])
    assert host.check_output("grep '^etcd-tang[[:space:]]' /etc/crypttab").split() == [
        "etcd-tang", f"UUID={luks_uuid(host, 'tang')}", "none", "luks,_netdev,nofail,timeout=10min"
    ]  # fmt: skip
    assert not host.file("/etc/cryptsetup-keys.d/etcd-tang.key").exists, "a key file beside a tang volume"
    bindings = host.check_output(f"clevis luks list -d {volume_file('tang')}")
    assert f"http://{topology.addresses[topology.tang_servers[0]]}" in bindings, bindings
    slot = bindings.split(":")[0]
    recover = f"clevis luks pass -d {volume_file('tang')} -s {slot} > /dev/null"
    assert host.run(recover).rc == 0, "Clevis cannot recover the key from the Tang server"
    # The attack: the disk away from its network (here: the Tang server gone) gives nothing.
    tang.check_output("systemctl stop tangd.socket")
    try:
        assert host.run(recover).rc != 0, "the key was recovered without the Tang server"
    finally:
        tang.check_output("systemctl start tangd.socket")


@pytest.fixture(scope="module")
def rebooted_vm(topology: Topology, host_of: HostOf, marker: str) -> str:
    """Reboot the member VM: its LUKS volume comes back locked."""
    member = topology.members[0]
    host_of(member).run("systemctl reboot")
    time.sleep(5)
    wait_for_ssh(topology, member)
    return member


def wait_for_ssh(topology: Topology, member: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = subprocess.run(
            ["ssh", *VM_SSH_OPTIONS, "-o", "ConnectTimeout=5", "-i", str(VM_DIR / "ssh/id_ed25519"),
             f"root@{topology.addresses[member]}", "systemctl is-system-running --wait"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if answer.stdout.strip() in ("running", "degraded"):
            return
        time.sleep(5)
    raise AssertionError(f"{member} did not come back after its reboot")


@pytest.mark.changes_cluster(order=1)
def test_after_a_reboot_the_volume_stays_locked_and_etcd_down(
    topology: Topology, host_of: HostOf, rebooted_vm: str
) -> None:
    host = host_of(rebooted_vm)
    assert not host.file(f"/dev/mapper/{LUKS_NAME}").exists, "the volume opened by itself"
    # Not started at boot at all (so no wait for the locked device and no failed unit).
    assert host.run("systemctl is-enabled etcd.service").stdout.strip() == "disabled"
    assert host.run("systemctl is-active etcd.service").stdout.strip() == "inactive"
    data_dir = f"/var/lib/etcd/{topology.cluster_vars['etcd_cluster_name']}"
    assert host.run(f"findmnt --mountpoint {data_dir}").rc == 1, "something is mounted at the data dir"


@pytest.mark.changes_cluster(order=1)
def test_after_a_reboot_the_tang_and_keyfile_volumes_open_by_themselves(
    topology: Topology, host_of: HostOf, key_source_volumes: dict[str, str], rebooted_vm: str
) -> None:
    host = host_of(rebooted_vm)
    for source, marker in key_source_volumes.items():
        mounted = host.run(f"findmnt -no SOURCE --mountpoint /srv/etcd-{source}")
        units = "-u 'systemd-cryptsetup@*' -u clevis-luks-askpass.service -u 'etcd-*-loop.service'"
        journal = host.run(f"journalctl -b --no-pager {units}")
        assert mounted.stdout.strip() == f"/dev/mapper/etcd-{source}", f"{source}: {journal.stdout[-3000:]}"
        assert host.check_output(f"cat /srv/etcd-{source}/marker") == marker


@pytest.mark.changes_cluster(order=2)
def test_the_play_unlocks_the_volume_and_etcd_serves_the_marker_again(
    topology: Topology, host_of: HostOf, probe: Probe, marker: str, rebooted_vm: str
) -> None:
    result = run_site(topology)
    assert result.returncode == 0, result.stdout[-5000:]
    endpoint = ("--endpoint", f"https://{topology.addresses[rebooted_vm]}:2379")
    got = probe(topology.apiservers[0], "kv", "get", "/storage/marker", *endpoint, *APISERVER_CREDS)
    assert got["served"] and marker in json.loads(got["body"]), got
    # The run's summary, after the reboot, says the etcd that now runs is confined (enforce).
    assert_summary_tells_the_truth_about_apparmor(topology, host_of, result.stdout)
