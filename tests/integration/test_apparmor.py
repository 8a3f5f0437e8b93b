"""etcd's AppArmor profile: compiled everywhere, enforced where the kernel has AppArmor.

The container scenarios show the profile is written, compiled and named by the unit, and that a
broken rule stops the run without touching the profile; their kernel cannot enforce it, and the
summary must say so. The VM tier (`-m vm`) shows enforcement: the running etcd is confined, and
under the profile the attacks a compromised etcd would try are denied (and logged by the kernel),
while what etcd needs still works.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from testinfra.host import Host

from conftest import (
    REPO,
    Topology,
    assert_summary_tells_the_truth_about_apparmor,
    drift,
    run_site,
)

HostOf = Callable[[str], Host]
PROFILE = "etcd"
PROFILE_PATH = f"/etc/apparmor.d/{PROFILE}"
RESULTS = REPO / "results"


def data_dir(topology: Topology) -> str:
    return f"/var/lib/etcd/{topology.cluster_vars['etcd_cluster_name']}"


@pytest.mark.any_tier
def test_the_profile_is_installed_compiles_and_is_named_by_the_unit(
    topology: Topology, host_of: HostOf
) -> None:
    for member in topology.members:
        host = host_of(member)
        profile = host.file(PROFILE_PATH)
        assert (profile.user, profile.group, profile.mode) == ("root", "root", 0o644), member
        assert f"profile {PROFILE} /usr/bin/etcd flags=(enforce)" in profile.content_string
        assert host.run(f"apparmor_parser --skip-kernel-load --skip-cache --quiet {PROFILE_PATH}").rc == 0
        assert host.check_output("systemctl show -p AppArmorProfile --value etcd.service").endswith(PROFILE)


def test_a_broken_rule_stops_the_run_and_leaves_the_profile_alone(
    topology: Topology, host_of: HostOf
) -> None:
    before = {m: host_of(m).file(PROFILE_PATH).sha256sum for m in topology.members}
    # Ends in a comma (so the preflight lets it through) but is no AppArmor rule: only the
    # parser can tell, and it must, before the file is replaced.
    broken = json.dumps({"etcd_apparmor_extra_rules": ["/srv/backup/** rwzq,"]})
    result = run_site(topology, "--tags", "apparmor", "-e", broken)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert "failed to validate" in output, output[-3000:]
    assert {m: host_of(m).file(PROFILE_PATH).sha256sum for m in topology.members} == before


def test_where_the_kernel_cannot_enforce_and_enforcement_is_required_the_run_stops(
    topology: Topology, host_of: HostOf
) -> None:
    """The members' own kernel answer decides: where it is not Y, a required profile stops the run."""
    without = [m for m in topology.members if host_of(m).run("test -d /sys/kernel/security/apparmor").rc != 0]
    if not without:
        pytest.skip("every member's kernel enforces AppArmor here (the VM tier)")
    before = {m: host_of(m).file(PROFILE_PATH).sha256sum for m in topology.members}
    result = run_site(topology, "--tags", "apparmor", "-e", "etcd_apparmor_require_kernel_support=true")
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    for member in without:
        assert f"The kernel of {member} does not enforce AppArmor" in output, output[-3000:]
    assert {m: host_of(m).file(PROFILE_PATH).sha256sum for m in topology.members} == before


# The VM tier reads the same summary from its unlocking run (test_vm_tier.py) instead of a run of
# its own: a site run on the emulated VM costs minutes.
def test_the_summary_says_whether_apparmor_is_enforced(topology: Topology, host_of: HostOf) -> None:
    result = run_site(topology, "--check", "--tags", "summary")
    assert result.returncode == 0, result.stdout[-3000:]
    assert_summary_tells_the_truth_about_apparmor(topology, host_of, result.stdout)
    # The same run's firewall line (test_firewall.py shows the warning when a table is gone).
    assert "firewall table inet etcd_firewall loaded on every member" in result.stdout


# --- the VM tier: a kernel that enforces it ------------------------------------------------------


def confined(host: Host, command: str, user: str = "root") -> tuple[int, str]:
    """Run a command under etcd's profile, as a compromised etcd would run it."""
    prefix = "" if user == "root" else f"runuser -u {user} -- "
    result = host.run(f"{prefix}aa-exec -p {PROFILE} -- {command}")
    return result.rc, result.stdout + result.stderr


@pytest.mark.vm
def test_the_running_etcd_is_confined_by_the_enforced_profile(topology: Topology, host_of: HostOf) -> None:
    for member in topology.members:
        host = host_of(member)
        status = json.loads(host.check_output("aa-status --json"))
        assert status["profiles"].get(PROFILE) == "enforce", status["profiles"]
        pid = host.check_output("systemctl show -p MainPID --value etcd.service")
        assert int(pid) > 0
        assert (
            host.file(f"/proc/{pid}/attr/apparmor/current").content_string.strip() == f"{PROFILE} (enforce)"
        )
        processes = status["processes"].get("/usr/bin/etcd", [])
        assert {"profile": PROFILE, "pid": pid, "status": "enforce"} in processes, processes


@pytest.mark.vm
def test_under_the_profile_what_etcd_needs_works(topology: Topology, host_of: HostOf) -> None:
    # Controls for the denials below: the profile lets a program start, read etcd's certificates
    # and write in the data directory (as the etcd user, whose directory it is).
    for member in topology.members:
        host = host_of(member)
        rc, out = confined(host, "cat /etc/etcd/pki/ca.crt")
        assert rc == 0 and "BEGIN CERTIFICATE" in out, out
        probe_file = f"{data_dir(topology)}/aa-probe-{uuid.uuid4().hex}"
        rc, out = confined(host, f"touch {probe_file}", user="etcd")
        assert rc == 0, out
        host.check_output(f"rm -f {probe_file}")
        rc, out = confined(host, "/usr/bin/env")
        assert rc == 0 and "PATH=" in out, out


@pytest.mark.vm
@pytest.mark.parametrize(
    ("attack", "command"),
    [
        ("read /etc/shadow", "cat /etc/shadow"),
        ("read the SSH host key", "cat /etc/ssh/ssh_host_ed25519_key"),
        ("write outside the data dir", "touch /var/tmp/aa-probe"),
        ("write to /etc", "touch /etc/aa-probe"),
        ("execute a shell", "/usr/bin/env /bin/sh -c true"),
        (
            "open a raw socket",
            "python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, 1)'",
        ),
    ],
)
def test_under_the_profile_an_attack_is_denied(
    topology: Topology, host_of: HostOf, attack: str, command: str
) -> None:
    for member in topology.members:
        host = host_of(member)
        # Control: unconfined, root may do it (so a denial below is AppArmor's).
        unconfined = host.run(command)
        host.run("rm -f /var/tmp/aa-probe /etc/aa-probe")
        assert unconfined.rc == 0, f"{attack}: fails even unconfined: {unconfined.stderr}"
        rc, out = confined(host, command)
        host.run("rm -f /var/tmp/aa-probe /etc/aa-probe")
        assert rc != 0 and "Permission denied" in out, f"{member}: {attack} was not denied: {out}"


def denials(host: Host) -> list[str]:
    log = host.run("journalctl -k --no-pager -o cat -g 'apparmor=\"DENIED\"'").stdout
    return [line for line in log.splitlines() if f'profile="{PROFILE}"' in line]


@pytest.mark.vm
def test_the_kernel_logs_the_denials_and_etcd_itself_caused_none(topology: Topology, host_of: HostOf) -> None:
    RESULTS.mkdir(exist_ok=True)
    for member in topology.members:
        host = host_of(member)
        confined(host, "cat /etc/shadow")
        seen = denials(host)
        assert any('name="/etc/shadow"' in line and 'comm="cat"' in line for line in seen), seen
        by_etcd = [line for line in seen if re.search(r'comm="etcd"', line)]
        assert not by_etcd, f"{member}: the profile denied etcd something it needs: {by_etcd}"
        (RESULTS / f"apparmor-denials-{member}.txt").write_text("\n".join(seen) + "\n")


@pytest.mark.vm
@pytest.mark.changes_cluster
def test_a_profile_put_in_complain_mode_is_drift_and_a_run_repairs_it(
    topology: Topology, host_of: HostOf, tmp_path: Path
) -> None:
    # Root on the member (or a careless admin) relaxes etcd's profile without touching its file.
    # The audit's verdict on it ("etcd (complain)" is not the inventory's label) is pinned by
    # tests/unit/test_audit.py; an audit run here would cost minutes of emulated CPU.
    member = topology.members[0]
    host = host_of(member)
    host.check_output(f"apparmor_parser --replace --complain {PROFILE_PATH}")
    drifted = drift(topology, tmp_path, "--limit", f"{member},localhost", "--", "--tags", "apparmor")
    repaired = run_site(topology, "--limit", f"{member},localhost", "--tags", "apparmor")
    status = json.loads(host.check_output("aa-status --json"))

    assert drifted.returncode == 1, drifted.output[-5000:]
    assert "would load /etc/apparmor.d/etcd" in drifted.output, drifted.output[-5000:]
    assert repaired.returncode == 0, repaired.stdout[-5000:]
    assert status["profiles"].get(PROFILE) == "enforce", status["profiles"]
