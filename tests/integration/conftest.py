"""Fixtures for the tests that run against a live lab or molecule topology.

The topology comes from an inventory file (ETCD_TEST_INVENTORY, default: the lab's), so the same
tests verify `make lab` and every molecule scenario. Hosts are reached with testinfra's podman
backend; attacks and requests are made from inside the containers with scripts/etcd_probe.py.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import testinfra
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from testinfra.host import Host

REPO = Path(__file__).resolve().parents[2]
# tests/kube_envelope.py: Secrets encrypted as the kube-apiserver encrypts them.
sys.path.insert(0, str(REPO / "tests"))
PROBE_PATH = "/usr/local/bin/etcd-probe"
FOREIGN_DIR = "/root/foreign-ca"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "changes_cluster(order=0): changes the cluster; runs after every other test, lowest order first",
    )
    config.addinivalue_line(
        "markers", "vm: needs the VM tier (molecule scenario vm); others run in containers"
    )
    config.addinivalue_line(
        "markers", "any_tier: runs in the VM tier too (the foundation's attacks, against a real kernel)"
    )
    config.addinivalue_line(
        "markers",
        "platform_independent: tests the play's own logic, the same on every platform; the debian12 "
        "scenario leaves it to default (each is a long site run, and make test is CPU-bound)",
    )
    config.addinivalue_line(
        "markers",
        "debian12_only: a long test run in the debian12 scenario only, where make test has time to "
        "spare; default leaves it out (it holds the platform_independent ones)",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the tests that change the cluster last, whatever their file names, in their given order."""

    def rank(item: pytest.Item) -> int:
        marker = item.get_closest_marker("changes_cluster")
        return -1 if marker is None else int(marker.kwargs.get("order", 0))

    items.sort(key=rank)


@dataclass(frozen=True)
class Topology:
    inventory: Path
    members: list[str]
    apiservers: list[str]
    untrusted: list[str]
    # Only the VM tier has one: a Tang server for the LUKS key source tang.
    tang_servers: list[str]
    addresses: dict[str, str]
    cluster_vars: dict[str, Any]
    host_vars: dict[str, dict[str, Any]]

    @property
    def all_hosts(self) -> list[str]:
        return self.members + self.apiservers + self.untrusted

    def is_vm(self, host: str) -> bool:
        return "lab_qemu_ipv4" in self.host_vars.get(host, {})

    def var(self, host: str, name: str, default: object = None) -> object:
        """A variable as the inventory sets it for a host: its own value, else the cluster's."""
        return self.host_vars.get(host, {}).get(name, self.cluster_vars.get(name, default))


def _group_hosts(tree: dict[str, Any], group: str) -> dict[str, dict[str, Any]]:
    for name, node in (tree.get("children") or {}).items():
        if name == group:
            return {h: (v or {}) for h, v in (node.get("hosts") or {}).items()}
        found = _group_hosts(node or {}, group)
        if found:
            return found
    return {}


def load_topology(inventory: Path) -> Topology:
    tree = yaml.safe_load(inventory.read_text())["all"]
    groups = {g: _group_hosts(tree, g) for g in ("etcd", "kube_control_plane", "untrusted", "tang")}
    # Containers have lab_podman_ipv4; VMs (roles/lab_qemu) have lab_qemu_ipv4.
    addresses = {
        host: str(hostvars.get("lab_podman_ipv4") or hostvars["lab_qemu_ipv4"])
        for hosts in groups.values()
        for host, hostvars in hosts.items()
    }
    group_vars_file = inventory.parent / "group_vars" / "all.yml"
    cluster_vars = yaml.safe_load(group_vars_file.read_text()) if group_vars_file.exists() else {}
    return Topology(
        inventory=inventory,
        members=list(groups["etcd"]),
        apiservers=list(groups["kube_control_plane"]),
        untrusted=list(groups["untrusted"]),
        tang_servers=list(groups["tang"]),
        addresses=addresses,
        cluster_vars=cluster_vars or {},
        host_vars={host: hostvars for hosts in groups.values() for host, hostvars in hosts.items()},
    )


@pytest.fixture(scope="session")
def topology() -> Topology:
    inventory = Path(os.environ.get("ETCD_TEST_INVENTORY", REPO / "inventory/lab/hosts.yml"))
    return load_topology(inventory)


VM_DIR = REPO / ".lab/vm"
VM_SSH_OPTIONS = ("-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={VM_DIR / 'known_hosts'}")


@pytest.fixture(scope="session")
def host_of(topology: Topology) -> Callable[[str], Host]:
    """Containers through podman, VMs over SSH with the lab's key and pinned host key."""
    cache: dict[str, Host] = {}

    def get(name: str) -> Host:
        if name not in cache:
            if topology.is_vm(name):
                cache[name] = testinfra.get_host(
                    f"ssh://root@{topology.addresses[name]}",
                    ssh_identity_file=str(VM_DIR / "ssh/id_ed25519"),
                    ssh_extra_args=" ".join(VM_SSH_OPTIONS),
                )
            else:
                cache[name] = testinfra.get_host(f"podman://{name}")
        return cache[name]

    return get


def copy_to(topology: Topology, source: Path, host: str, destination: str) -> None:
    if topology.is_vm(host):
        subprocess.run(
            ["scp", "-q", *VM_SSH_OPTIONS, "-i", str(VM_DIR / "ssh/id_ed25519"), str(source),
             f"root@{topology.addresses[host]}:{destination}"],
            check=True,
        )  # fmt: skip
    else:
        podman("cp", str(source), f"{host}:{destination}")


def run_site(topology: Topology, *args: str) -> subprocess.CompletedProcess[str]:
    """Run playbooks/site.yml against the topology's inventory, as an operator would."""
    return run_playbook(topology, REPO / "playbooks/site.yml", *args)


def ansible_env() -> dict[str, str]:
    """The environment for Ansible runs: the project's configuration, plain text output."""
    # Plain text for the tests that read the recap: molecule's verify step sets ANSIBLE_FORCE_COLOR,
    # which wins over ANSIBLE_NOCOLOR.
    return dict(
        os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0"
    )


@dataclass(frozen=True)
class TimedRun:
    test: str
    what: str
    seconds: float


# Every playbook and script run of the session, for the summary at its end: nearly all of the
# suite's time is spent in them, and CI's log is where `make test`'s time is kept in check.
TIMED_RUNS: list[TimedRun] = []


def timed_run(what: str, argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    started = time.monotonic()
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=False, env=ansible_env(), cwd=cwd)
    finally:
        test = os.environ.get("PYTEST_CURRENT_TEST", "?").split("::", 1)[-1]
        TIMED_RUNS.append(TimedRun(test, what, time.monotonic() - started))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not TIMED_RUNS:
        return
    total = sum(run.seconds for run in TIMED_RUNS)
    terminalreporter.write_sep("=", f"{len(TIMED_RUNS)} playbook and script runs took {total:.0f} s")
    per_test: dict[str, list[TimedRun]] = {}
    for run in TIMED_RUNS:
        per_test.setdefault(run.test, []).append(run)
    ranked = sorted(per_test.items(), key=lambda item: -sum(r.seconds for r in item[1]))
    for test, runs in ranked[:15]:
        each = ", ".join(f"{r.what} {r.seconds:.0f}" for r in runs)
        terminalreporter.write_line(f"{sum(r.seconds for r in runs):6.0f} s  {test}: {each}")


def run_playbook(topology: Topology, playbook: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a playbook against the topology's inventory with the project's configuration."""
    shown = (Path(a).name if a.startswith("/") else a if len(a) <= 60 else a[:57] + "..." for a in args)
    what = " ".join([playbook.name, *shown])
    return timed_run(
        what,
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(topology.inventory),
         str(playbook), *args],
        cwd=REPO,
    )  # fmt: skip


def unvault(path: Path) -> bytes:
    """A file the play vault-encrypted on the controller, decrypted with the lab's vault password."""
    from ansible.parsing.vault import VaultLib, VaultSecret

    password = subprocess.run(
        [str(REPO / "scripts/lab_vault_password.py")], check=True, capture_output=True, text=True
    ).stdout.strip()
    plain: bytes = VaultLib([("default", VaultSecret(password.encode()))]).decrypt(path.read_bytes())
    return plain


def podman(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], check=True, capture_output=True, text=True)


@pytest.fixture(scope="session", autouse=True)
def probe_installed(topology: Topology) -> None:
    """Put the probe on every host; it needs nothing but the host's Python."""
    for name in topology.all_hosts:
        copy_to(topology, REPO / "scripts/etcd_probe.py", name, PROBE_PATH)


ProbeResult = dict[str, Any]


@pytest.fixture(scope="session")
def probe(host_of: Callable[[str], Host]) -> Callable[..., ProbeResult]:
    """Run the probe on a host; returns its JSON outcome plus the exit status."""

    def run(on: str, *args: str) -> ProbeResult:
        cmd = host_of(on).run("python3 " + PROBE_PATH + " " + " ".join(_quote(a) for a in args))
        assert cmd.rc in (0, 1), f"probe on {on} failed to run: rc={cmd.rc} {cmd.stdout} {cmd.stderr}"
        outcome: ProbeResult = json.loads(cmd.stdout)
        outcome["rc"] = cmd.rc
        outcome["where"] = f"on {on}: etcd-probe {' '.join(args)}"
        return outcome

    return run


def _quote(arg: str) -> str:
    return "'" + arg.replace("'", "'\\''") + "'"


APISERVER_CREDS = (
    "--cacert",
    "/etc/kubernetes/pki/etcd/ca.crt",
    "--cert",
    "/etc/kubernetes/pki/apiserver-etcd-client.crt",
    "--key",
    "/etc/kubernetes/pki/apiserver-etcd-client.key",
)
MEMBER_PEER_CREDS = (
    "--cacert",
    "/etc/etcd/pki/peer-ca.crt",
    "--cert",
    "/etc/etcd/pki/peer.crt",
    "--key",
    "/etc/etcd/pki/peer.key",
)


@pytest.fixture(scope="session")
def foreign_client_cert(topology: Topology) -> Iterator[tuple[str, ...]]:
    """A throwaway "kubernetes" CA and a client certificate it signed, on the apiserver host.

    This is the classic mistake CIS 2.7 is about: a certificate from the cluster's other CA must
    not open etcd. It sits on the apiserver host because the firewall lets only that host reach
    the client port: this is the attack left once the network is open.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes")])
    # Only the signature matters to etcd: the client certificate is issued by "kubernetes", a CA
    # etcd has never heard of, signed with that CA's key.
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver-etcd-client")]))
        .issuer_name(ca_name)
        .public_key(client_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    attacker = topology.apiservers[0]
    files = {
        "client.crt": client_cert.public_bytes(serialization.Encoding.PEM),
        "client.key": client_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    }
    subprocess.run(["podman", "exec", attacker, "mkdir", "-p", FOREIGN_DIR], check=True)
    for name, data in files.items():
        subprocess.run(
            ["podman", "exec", "-i", attacker, "sh", "-c", f"cat > {FOREIGN_DIR}/{name}"],
            input=data,
            check=True,
        )
    yield ("--cert", f"{FOREIGN_DIR}/client.crt", "--key", f"{FOREIGN_DIR}/client.key")


@dataclass
class MemberState:
    serial: str
    pid: str
    started_us: int


@dataclass
class ChangeRun:
    output: str
    before: dict[str, MemberState]
    after: dict[str, MemberState]
    writes: dict[str, Any]


def member_state(host: Host) -> MemberState:
    serial = host.check_output("openssl x509 -noout -serial -in /etc/etcd/pki/server.crt")
    pid = host.check_output("systemctl show -p MainPID --value etcd.service")
    started = host.check_output("systemctl show -p ExecMainStartTimestampMonotonic --value etcd.service")
    return MemberState(serial=serial, pid=pid, started_us=int(started))


@contextmanager
def client_writes(topology: Topology, *, distinct_keys: bool = False) -> Iterator[dict[str, Any]]:
    """The apiserver writes through every member while the block runs; the dict it yields is
    filled at the end with watch-writes' report (with distinct keys: acknowledged and lost too)."""
    apiserver = topology.apiservers[0]
    stop_file = f"/tmp/stop-writes-{uuid.uuid4()}"
    endpoints = ",".join(f"https://{topology.addresses[m]}:2379" for m in topology.members)
    writer = subprocess.Popen(
        [
            "podman", "exec", apiserver, "python3", PROBE_PATH, "watch-writes", "--endpoints", endpoints,
            "--stop-file", stop_file, *(["--distinct-keys"] if distinct_keys else []), *APISERVER_CREDS,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    report: dict[str, Any] = {}
    try:
        yield report
    finally:
        subprocess.run(["podman", "exec", apiserver, "touch", stop_file], check=True)
        stdout, _ = writer.communicate(timeout=120)
        report.update(json.loads(stdout))


def change_while_writing(topology: Topology, host_of: Callable[[str], Host], *args: str) -> ChangeRun:
    """Run site.yml with `args` while the apiserver writes through every member."""
    before = {m: member_state(host_of(m)) for m in topology.members}
    with client_writes(topology) as writes:
        result = run_site(topology, *args)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-20000:]
    after = {m: member_state(host_of(m)) for m in topology.members}
    return ChangeRun(output=output, before=before, after=after, writes=writes)


ADMIN_ETCDCTL = (
    "etcdctl --cacert=/etc/etcd/pki/ca.crt --cert=/etc/etcd/pki/admin.crt --key=/etc/etcd/pki/admin.key"
)


@dataclass(frozen=True)
class Membership:
    """etcd's membership at one moment, as `member list` counts it."""

    voters: int
    learners: int
    # Voting members added but never started: they count toward quorum and cannot answer. (A
    # learner has no name either until it starts, but it does not vote.)
    unstarted_voters: int
    names: tuple[str, ...]


def membership(via: str) -> Membership:
    """Ask the member `via` (its own client port) who etcd's members are."""
    listed = subprocess.run(
        ["podman", "exec", via, *ADMIN_ETCDCTL.split(), "--endpoints=https://127.0.0.1:2379",
         "member", "list", "-w", "json"],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    members = json.loads(listed.stdout)["members"]
    return Membership(
        voters=sum(1 for m in members if m.get("name") and not m.get("isLearner")),
        learners=sum(1 for m in members if m.get("isLearner")),
        unstarted_voters=sum(1 for m in members if not m.get("name") and not m.get("isLearner")),
        names=tuple(sorted(m.get("name") or "" for m in members)),
    )


@dataclass
class MembershipWatch:
    """Every distinct membership seen while watching, in order, and how many reads failed."""

    seen: list[Membership] = field(default_factory=list)
    failed_reads: int = 0


@contextmanager
def watching_membership(via: str, interval: float = 0.2) -> Iterator[MembershipWatch]:
    """Read the membership over and over while the block runs (a change between two reads is missed
    only if it is undone within `interval` plus one read)."""
    watch, stop = MembershipWatch(), threading.Event()

    def poll() -> None:
        while not stop.is_set():
            try:
                now = membership(via)
            except (subprocess.SubprocessError, ValueError, KeyError):
                watch.failed_reads += 1
            else:
                if not watch.seen or watch.seen[-1] != now:
                    watch.seen.append(now)
            stop.wait(interval)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        yield watch
    finally:
        stop.set()
        poller.join(timeout=60)


def wait_for_boot(host: Host, timeout: float = 120) -> str:
    """Wait until systemd in a (re)started container has finished booting; returns its state."""
    state = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and state not in ("running", "degraded"):
        # The first execs after a restart can fail while the container's init comes up.
        state = host.run("systemctl is-system-running --wait").stdout.strip()
        time.sleep(0 if state else 1)
    return state


@dataclass(frozen=True)
class Rebooted:
    member: str
    # The host's CLOCK_MONOTONIC (shared with its containers) just before the restart, in µs.
    restarted_after_us: int
    boot_state: str


def storage_mode(topology: Topology, member: str) -> str:
    return str(topology.var(member, "etcd_storage_mode", "disk"))


@pytest.fixture(scope="session")
def marker(topology: Topology, probe: Callable[..., ProbeResult]) -> str:
    """A unique value written through etcd by the apiserver, to be looked for on disks and members."""
    value = f"marker-{uuid.uuid4()}"
    endpoint = f"https://{topology.addresses[topology.members[0]]}:2379"
    written = probe(
        topology.apiservers[0],
        "kv",
        "put",
        "/storage/marker",
        value,
        "--endpoint",
        endpoint,
        *APISERVER_CREDS,
    )
    assert written["served"], written
    return value


@pytest.fixture(scope="session")
def rebooted_member(topology: Topology, host_of: Callable[[str], Host], marker: str) -> Rebooted:
    """Restart the last member's container: a reboot, which empties a RAM disk.

    Shared by the firewall tests (the table is back before etcd) and the storage tests (an emptied
    member refuses to start; a re-run rejoins it). The marker is written before, so that the
    rejoined member must fetch it from its peers.
    """
    member = topology.members[-1]
    before_us = int(time.monotonic() * 1e6)  # CLOCK_MONOTONIC, as systemd and journald use
    podman("restart", member)
    return Rebooted(member=member, restarted_after_us=before_us, boot_state=wait_for_boot(host_of(member)))


def assert_summary_tells_the_truth_about_apparmor(
    topology: Topology, host_of: Callable[[str], Host], output: str
) -> None:
    """Each member's summary line says enforced exactly where the host's kernel has AppArmor."""
    for member in topology.members:
        enforces = host_of(member).run("test -d /sys/kernel/security/apparmor").rc == 0
        expected = (
            "AppArmor etcd (enforce)" if enforces else "AppArmor NOT enforced (the kernel has no AppArmor)"
        )
        line = next((ln for ln in output.splitlines() if f'"{member}: ' in ln), "")
        assert expected in line, line or output[-3000:]


# --- scripts/drift.py and scripts/audit.py, as CI runs them -----------------------------------


@dataclass(frozen=True)
class Report:
    returncode: int
    output: str
    data: dict[str, Any]


def run_script(topology: Topology, script: str, report: Path, *args: str) -> Report:
    """Run one of scripts/ against the topology's inventory; read the JSON report it wrote."""
    argv = [sys.executable, str(REPO / "scripts" / script), "-i", str(topology.inventory), *args]
    done = timed_run(script, argv)
    data = json.loads(report.read_text()) if report.exists() else {}
    return Report(done.returncode, done.stdout + done.stderr[-3000:], data)


def drift(topology: Topology, tmp_path: Path, *args: str) -> Report:
    report = tmp_path / "drift.json"
    return run_script(topology, "drift.py", report, "--report", str(report), *args)


def audit(topology: Topology, tmp_path: Path, *args: str) -> Report:
    report, junit = tmp_path / "audit.json", tmp_path / "audit.xml"
    return run_script(topology, "audit.py", report, "--json", str(report), "--junit", str(junit), *args)


def failed(report: Report) -> set[tuple[str, str]]:
    return {(c["host"], c["id"]) for c in report.data.get("checks", []) if c["status"] == "fail"}
