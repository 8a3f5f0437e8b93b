#!/usr/bin/env python3
"""Measure what hardening costs etcd, and what the toolkit costs an operator as clusters grow.

    bench.py [--part hardening|scale|membership|all] [--rounds 3] [--perf-load l] [--sizes 3,5,7]

Part "hardening": three 3-member clusters run side by side on this machine: a plain etcd (Debian's
package, no TLS, data on the container's disk; playbooks/bench_plain_etcd.yml) and the toolkit's
hardened cluster in each data-directory mode containers offer (disk, tmpfs). In every round each
cluster gets the same load from its control-plane host (with its client certificate where the
cluster demands one): `etcdctl check perf` (etcd's own load test, gRPC like an apiserver), then
single put and read requests one at a time for their latency (p50/p99). The clusters take turns
in a rotating order, so a noisy minute on a shared machine does not fall on one of them only.

Part "scale": for each size, a fresh lab with that many members: a fresh converge (new CA, new
containers), a no-op re-run and a check-mode run of playbooks/site.yml, then the firewall role
alone (`--tags firewall`) before and after adding 50 client addresses it must allow.

Part "membership": a fresh 3-member cluster grows to five (playbooks/site.yml with two more members
in group etcd: each added as a learner, promoted, then the next) and shrinks back to three
(playbooks/remove_member.yml), while its control-plane host writes distinct keys through the three
members that stay (etcd-probe watch-writes). Each change's run time, the writes, how many failed or
were lost (acknowledged but not read back) and the longest single write: the stall a client saw.

Each part prints a Markdown table and writes its figures as JSON under --results. Ansible's
outcome is read from its JSON callback, never from coloured text.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Inventories, CAs and encryption keys of the benchmark's clusters (inside the git-ignored .lab).
STATE = REPO / ".lab" / "bench"
# kubeadm's paths, where the toolkit puts the control-plane host's etcd client credentials.
CLIENT_TLS = (
    "--cacert=/etc/kubernetes/pki/etcd/ca.crt",
    "--cert=/etc/kubernetes/pki/apiserver-etcd-client.crt",
    "--key=/etc/kubernetes/pki/apiserver-etcd-client.key",
)
EXTRA_CLIENT_SOURCES = 50


@dataclass(frozen=True)
class Cluster:
    """One benchmark cluster: its containers are named after it and live on their own network."""

    name: str
    members: int
    storage: str  # "plain" (no hardening at all), or the toolkit's data-dir mode: "disk", "tmpfs"
    subnet: str

    @property
    def hardened(self) -> bool:
        return self.storage != "plain"

    @property
    def client(self) -> str:
        return f"{self.name}-api"

    def address(self, index: int) -> str:
        """Members are .11, .12, ...; the control-plane host is .21."""
        network = ipaddress.ip_network(self.subnet)
        return str(network.network_address + index)

    def member_addresses(self) -> dict[str, str]:
        return {f"{self.name}-{i}": self.address(10 + i) for i in range(1, self.members + 1)}

    def endpoints(self) -> list[str]:
        scheme = "https" if self.hardened else "http"
        return [f"{scheme}://{address}:2379" for address in self.member_addresses().values()]

    def client_tls(self) -> tuple[str, ...]:
        return CLIENT_TLS if self.hardened else ()

    def inventory(self) -> dict[str, object]:
        return {
            "all": {
                "vars": {
                    "ansible_connection": "podman_pipelined",
                    "ansible_python_interpreter": "/usr/bin/python3",
                },
                "children": {
                    "etcd": {
                        "hosts": {
                            name: {"lab_podman_ipv4": ip} for name, ip in self.member_addresses().items()
                        }
                    },
                    "kube_control_plane": {"hosts": {self.client: {"lab_podman_ipv4": self.address(21)}}},
                },
            }
        }

    def group_vars(self) -> dict[str, object]:
        settings: dict[str, object] = {
            "etcd_address": "{{ lab_podman_ipv4 | default('') }}",
            "etcd_cluster_name": self.name,
            "etcd_pki_controller_dir": str(STATE / self.name / "pki"),
            "kube_apiserver_etcd_key_file": str(STATE / self.name / "encryption" / "keys.yml.vault"),
            "kube_apiserver_etcd_rotation_reload_seconds": 0,
            "lab_podman_network": self.name,
            "lab_podman_subnet": self.subnet,
            # As in the lab: the containers' kernel cannot enforce AppArmor (the profile is compiled).
            "etcd_apparmor_require_kernel_support": False,
        }
        if self.hardened:
            settings["etcd_storage_mode"] = self.storage
            settings["etcd_storage_allow_volatile_quorum"] = self.storage == "tmpfs"
        return settings

    def write_inventory(self) -> Path:
        directory = STATE / self.name / "inventory"
        (directory / "group_vars").mkdir(parents=True, exist_ok=True)
        # JSON is YAML: Ansible reads these files as they are.
        (directory / "hosts.yml").write_text(json.dumps(self.inventory(), indent=2) + "\n")
        (directory / "group_vars" / "all.yml").write_text(json.dumps(self.group_vars(), indent=2) + "\n")
        return directory


# ---------------------------------------------------------------------------------------------
# Running things


def run(
    argv: list[str], *, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, check=False)
    if check and result.returncode != 0:
        sys.stderr.write(result.stdout[-5000:] + result.stderr[-5000:])
        raise SystemExit(f"{' '.join(argv[:6])} ... failed with exit status {result.returncode}")
    return result


def ansible_playbook(
    inventory: Path, playbook: str, *args: str, json_stats: bool = False
) -> tuple[float, str]:
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    env.setdefault("ANSIBLE_VAULT_PASSWORD_FILE", str(REPO / "scripts" / "lab_vault_password.py"))
    if json_stats:
        env.update(ANSIBLE_STDOUT_CALLBACK="ansible.posix.json")
    started = time.monotonic()
    result = run(["ansible-playbook", "-i", str(inventory), str(REPO / playbook), *args], env=env)
    return time.monotonic() - started, result.stdout


def playbook_stats(json_output: str) -> tuple[int, int, int]:
    """Total changed and failed task counts, and the host count, from the JSON callback's output."""
    start = json_output.index("{")
    stats = json.loads(json_output[start:])["stats"]
    changed = sum(int(h.get("changed", 0)) for h in stats.values())
    failed = sum(int(h.get("failures", 0)) + int(h.get("unreachable", 0)) for h in stats.values())
    return changed, failed, len(stats)


def role_seconds(json_output: str) -> dict[str, float]:
    """Seconds spent in each role (tasks outside a role count as "play tasks"), from the JSON callback.

    A task's time is its wall time over all its hosts, so the roles' times add up to the run's.
    """
    document = json.loads(json_output[json_output.index("{") :])
    seconds: dict[str, float] = {}
    for play in document["plays"]:
        for task in play["tasks"]:
            name = str(task["task"]["name"])
            role = name.split(" : ", 1)[0] if " : " in name else "play tasks"
            duration = task["task"]["duration"]
            if "end" not in duration:
                continue
            took = datetime.datetime.fromisoformat(duration["end"]) - datetime.datetime.fromisoformat(
                duration["start"]
            )
            seconds[role] = seconds.get(role, 0.0) + took.total_seconds()
    return {role: round(value, 1) for role, value in sorted(seconds.items(), key=lambda item: -item[1])}


# Actions Ansible runs on the controller only: they cost no round trip to a host.
CONTROLLER_ACTIONS = frozenset(
    f"ansible.builtin.{name}"
    for name in (
        "assert",
        "debug",
        "fail",
        "set_fact",
        "include_tasks",
        "include_role",
        "import_tasks",
        "import_role",
        "validate_argument_spec",
        "meta",
    )
) | {"etcd_assert_pipelined"}


def module_runs(json_output: str) -> dict[str, int]:
    """Per host, the tasks that ran a module on it or for it (delegated).

    Skipped and controller-only tasks do not count.

    A loop counts once: its items run in one task, and the round trips are the cost counted here.
    """
    document = json.loads(json_output[json_output.index("{") :])
    counts: dict[str, int] = {}
    for play in document["plays"]:
        for task in play["tasks"]:
            for host, result in task["hosts"].items():
                if result.get("skipped") or result.get("action") in CONTROLLER_ACTIONS:
                    continue
                counts[host] = counts.get(host, 0) + 1
    return counts


@contextmanager
def running(cluster: Cluster, *, keep: bool) -> Iterator[Path]:
    """A cluster's containers, started from nothing (no containers, no CA, no keys) and removed after."""
    inventory = cluster.write_inventory()
    ansible_playbook(inventory, "playbooks/lab_down.yml")
    shutil.rmtree(STATE / cluster.name / "pki", ignore_errors=True)
    ansible_playbook(inventory, "playbooks/lab_up.yml")
    try:
        yield inventory
    finally:
        if not keep:
            ansible_playbook(inventory, "playbooks/lab_down.yml")


def on_client(cluster: Cluster, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(["podman", "exec", cluster.client, *argv], check=check)


# ---------------------------------------------------------------------------------------------
# Part 1: what hardening costs etcd


@dataclass
class Spread:
    """One figure over the rounds: median, minimum and maximum."""

    median: float
    low: float
    high: float
    values: list[float]

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values), values)


PERF_THROUGHPUT = re.compile(r"Throughput (?:is|too low:) (\d+) writes/s")
PERF_SLOWEST = re.compile(r"Slowest request took(?: too long:)? ([0-9.]+)s")


def parse_check_perf(output: str) -> dict[str, float]:
    """Throughput and slowest request from `etcdctl check perf`, whether it says PASS or FAIL.

    A FAIL only means the machine could not reach the load's target rate, which at a saturating
    load is the point; errors (requests that failed) make the run unusable and are refused.
    """
    if "too many errors" in output:
        raise ValueError("check perf saw failed requests:\n" + output[-2000:])
    throughput = PERF_THROUGHPUT.search(output)
    slowest = PERF_SLOWEST.search(output)
    if not throughput or not slowest:
        raise ValueError("check perf printed no result:\n" + output[-2000:])
    return {
        "perf_writes_per_s": float(throughput.group(1)),
        "perf_slowest_ms": round(float(slowest.group(1)) * 1000, 3),
    }


def leader_endpoint(cluster: Cluster) -> str:
    """The leader's client URL: latency is measured there, so no cluster pays a forwarding hop more."""
    out = on_client(
        cluster,
        "etcdctl",
        f"--endpoints={','.join(cluster.endpoints())}",
        *cluster.client_tls(),
        "endpoint",
        "status",
        "-w",
        "json",
    ).stdout
    for status in json.loads(out):
        if status["Status"]["header"]["member_id"] == status["Status"]["leader"]:
            return str(status["Endpoint"])
    raise SystemExit(f"{cluster.name}: no leader among {cluster.endpoints()}")


def measure_load(cluster: Cluster, *, perf_load: str, latency_count: int) -> dict[str, float]:
    perf = on_client(
        cluster,
        "etcdctl",
        f"--endpoints={','.join(cluster.endpoints())}",
        *cluster.client_tls(),
        "check",
        "perf",
        f"--load={perf_load}",
        "--auto-compact",
        "--auto-defrag",
        check=False,
    )
    figures = parse_check_perf(perf.stdout + perf.stderr)
    latency = on_client(
        cluster,
        "etcd-probe",
        "latency",
        "--endpoint",
        leader_endpoint(cluster),
        "--count",
        str(latency_count),
        *cluster.client_tls(),
    )
    for item in json.loads(latency.stdout):
        if item["failed"]:
            raise SystemExit(
                f"{cluster.name}: {item['failed']} of {item['count']} {item['operation']} requests failed"
            )
        figures[f"{item['operation']}_p50_ms"] = item["p50_ms"]
        figures[f"{item['operation']}_p99_ms"] = item["p99_ms"]
    return figures


# What each figure is, and how many decimals it deserves.
METRICS: dict[str, tuple[str, int]] = {
    "perf_writes_per_s": ("check perf: writes/s", 0),
    "perf_slowest_ms": ("check perf: slowest write, ms", 1),
    "put_p50_ms": ("put latency p50, ms", 2),
    "put_p99_ms": ("put latency p99, ms", 2),
    "range_p50_ms": ("read latency p50, ms", 2),
    "range_p99_ms": ("read latency p99, ms", 2),
}
# Column names of the clusters in the table.
TITLES = {"plain": "plain (no TLS, disk)", "disk": "hardened, disk", "tmpfs": "hardened, tmpfs"}


def summarize(rounds: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, Spread]]:
    return {
        cluster: {metric: Spread.of([r[metric] for r in results]) for metric in METRICS}
        for cluster, results in rounds.items()
    }


def hardening_table(summary: dict[str, dict[str, Spread]], baseline: str) -> str:
    """Markdown: per figure, each cluster's median [min-max] and its ratio to the baseline's median."""
    names = list(summary)
    title = {n: TITLES.get(n, n) for n in names}
    header = "| figure | " + " | ".join(f"{title[n]}: median [min-max]" for n in names)
    header += "".join(f" | {n} / {baseline}" for n in names if n != baseline) + " |"
    lines = [header, "| --- |" + " ---: |" * (len(names) * 2 - 1)]
    for metric, (label, decimals) in METRICS.items():
        spreads = [summary[n][metric] for n in names]
        cells = [f"{s.median:.{decimals}f} [{s.low:.{decimals}f}-{s.high:.{decimals}f}]" for s in spreads]
        base = summary[baseline][metric].median
        ratios = [f"{summary[n][metric].median / base:.2f}" for n in names if n != baseline]
        lines.append(f"| {label} | " + " | ".join(cells + ratios) + " |")
    return "\n".join(lines)


def hardening_part(args: argparse.Namespace) -> dict[str, object]:
    clusters = [
        Cluster("bench-plain", 3, "plain", "10.90.41.0/24"),
        Cluster("bench-disk", 3, "disk", "10.90.42.0/24"),
        Cluster("bench-tmpfs", 3, "tmpfs", "10.90.43.0/24"),
    ]
    rounds: dict[str, list[dict[str, float]]] = {c.storage: [] for c in clusters}
    with (
        running(clusters[0], keep=args.keep) as plain,
        running(clusters[1], keep=args.keep) as disk,
        running(clusters[2], keep=args.keep) as tmpfs,
    ):
        ansible_playbook(plain, "playbooks/bench_plain_etcd.yml")
        for inventory in (disk, tmpfs):
            ansible_playbook(inventory, "playbooks/site.yml")
        for inventory in (plain, disk, tmpfs):
            ansible_playbook(inventory, "playbooks/bench_client.yml")
        version = on_client(clusters[0], "etcdctl", "version").stdout.split("\n")[0]
        for number in range(args.rounds):
            # Rotate who goes first, so each cluster meets the machine's quiet and busy moments alike.
            order = clusters[number % len(clusters) :] + clusters[: number % len(clusters)]
            for cluster in order:
                figures = measure_load(cluster, perf_load=args.perf_load, latency_count=args.latency_count)
                print(f"round {number + 1}/{args.rounds} {cluster.name}: {json.dumps(figures)}", flush=True)
                rounds[cluster.storage].append(figures)
    summary = summarize(rounds)
    return {
        "load": {
            "check_perf": f"etcdctl check perf --load={args.perf_load} --auto-compact --auto-defrag",
            "latency": f"{args.latency_count} puts of 256 B, then {args.latency_count} reads, one at a time, "
            "to the leader over one kept connection (etcd-probe latency)",
            "rounds": args.rounds,
            "etcdctl": version,
        },
        "clusters": {c.storage: asdict(c) for c in clusters},
        "rounds": rounds,
        "summary": {n: {m: asdict(s) for m, s in metrics.items()} for n, metrics in summary.items()},
        "table": hardening_table(summary, "plain"),
    }


# ---------------------------------------------------------------------------------------------
# Part 2: what the toolkit costs an operator as the cluster grows


@dataclass
class Run:
    name: str
    seconds: float
    changed: int
    failed: int
    hosts: int
    roles: dict[str, float] = field(default_factory=dict)
    # The most module runs any one host had (the controller's own not counted).
    module_runs: int = 0


def measure(inventory: Path, name: str, *args: str) -> Run:
    seconds, output = ansible_playbook(inventory, "playbooks/site.yml", *args, json_stats=True)
    changed, failed, hosts = playbook_stats(output)
    runs = [count for host, count in module_runs(output).items() if host != "localhost"]
    return Run(name, round(seconds, 1), changed, failed, hosts, role_seconds(output), max(runs, default=0))


def extra_client_sources(count: int) -> list[str]:
    """Addresses outside every lab network (TEST-NET-2), as a backup host or monitoring would be."""
    return [str(ipaddress.ip_address("198.51.100.0") + i) for i in range(1, count + 1)]


def scale_table(runs_by_size: dict[int, list[Run]]) -> str:
    sizes = sorted(runs_by_size)
    smallest = sizes[0]
    header = "| run | " + " | ".join(f"{n} members, s" for n in sizes)
    header += (
        "".join(f" | {n}/{smallest}" for n in sizes[1:]) + " | changed tasks | module runs per host (most) |"
    )
    lines = [header, "| --- |" + " ---: |" * (2 * len(sizes) - 1) + " ---: | ---: |"]
    for index, first in enumerate(runs_by_size[smallest]):
        row = [runs_by_size[n][index] for n in sizes]
        cells = [f"{r.seconds:.1f}" for r in row]
        ratios = [f"{r.seconds / first.seconds:.2f}" for r in row[1:]]
        changed = "/".join(str(r.changed) for r in row)
        module_runs_cell = "/".join(str(r.module_runs) for r in row)
        lines.append(
            f"| {first.name} | " + " | ".join(cells + ratios) + f" | {changed} | {module_runs_cell} |"
        )
    return "\n".join(lines)


def firewall_table(runs: list[Run]) -> str:
    base = runs[0].seconds
    lines = [
        "| firewall role alone (`--tags firewall`) | seconds | vs first | changed tasks |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [f"| {r.name} | {r.seconds:.1f} | {r.seconds / base:.2f} | {r.changed} |" for r in runs]
    return "\n".join(lines)


def roles_table(runs_by_size: dict[int, list[Run]], run_index: int) -> str:
    """Markdown: seconds per role in one kind of run at each size, the roles that grew most first."""
    sizes = sorted(runs_by_size)
    per_size = {n: runs_by_size[n][run_index].roles for n in sizes}
    roles = sorted(set().union(*per_size.values()), key=lambda r: -(per_size[sizes[-1]].get(r, 0.0)))
    name = runs_by_size[sizes[0]][run_index].name
    lines = [f"| {name}: role | " + " | ".join(f"{n} members, s" for n in sizes) + " |"]
    lines.append("| --- |" + " ---: |" * len(sizes))
    lines += [f"| {r} | " + " | ".join(f"{per_size[n].get(r, 0.0):.1f}" for n in sizes) + " |" for r in roles]
    return "\n".join(lines)


def scale_part(args: argparse.Namespace) -> dict[str, object]:
    runs_by_size: dict[int, list[Run]] = {}
    firewall: list[Run] = []
    for index, size in enumerate(args.sizes):
        cluster = Cluster(f"bench-scale{size}", size, "tmpfs", f"10.90.{50 + index}.0/24")
        with running(cluster, keep=args.keep) as inventory:
            runs = [
                measure(inventory, "fresh converge"),
                measure(inventory, "no-op re-run"),
                measure(inventory, "check mode (--check --diff)", "--check", "--diff"),
            ]
            for r in runs:
                print(f"{cluster.name}: {r.name} {r.seconds} s, {r.changed} changed", flush=True)
            if runs[1].changed or runs[2].changed:
                # A re-run that changes something is not a no-op: its time would mislead.
                raise SystemExit(f"{cluster.name}: the re-run or check-mode run changed something")
            runs_by_size[size] = runs
            if index == 0:
                extra = json.dumps(
                    {"etcd_firewall_client_extra_sources": extra_client_sources(EXTRA_CLIENT_SOURCES)}
                )
                firewall = [
                    measure(inventory, "no-op, the inventory's sources only", "--tags", "firewall"),
                    measure(
                        inventory,
                        f"{EXTRA_CLIENT_SOURCES} client addresses added",
                        "--tags",
                        "firewall",
                        "-e",
                        extra,
                    ),
                    measure(
                        inventory,
                        f"no-op, with the {EXTRA_CLIENT_SOURCES} addresses",
                        "--tags",
                        "firewall",
                        "-e",
                        extra,
                    ),
                ]
                if not firewall[1].changed or firewall[0].changed or firewall[2].changed:
                    raise SystemExit(f"firewall runs did not change exactly once: {firewall}")
    return {
        "sizes": args.sizes,
        "runs": {str(size): [asdict(r) for r in runs] for size, runs in runs_by_size.items()},
        "firewall": {"members": args.sizes[0], "runs": [asdict(r) for r in firewall]},
        "table": scale_table(runs_by_size)
        + "\n\n"
        + roles_table(runs_by_size, 1)
        + "\n\n"
        + firewall_table(firewall),
    }


# ---------------------------------------------------------------------------------------------
# Part "membership": add two members to a three-member cluster and remove them again, while the
# control-plane host writes through the three that stay (issue 18's add and remove, timed).

MEMBERSHIP_VOTERS = 3
MEMBERSHIP_ADDED = 2
# Out of group etcd but still in the inventory, as the README's removal asks (so a removal can wipe them).
RETIRED_GROUP = "etcd_retired"


def membership_inventory(cluster: Cluster, directory: Path, voters: int, aside: str) -> Path:
    """The cluster's inventory with only its first `voters` members in group etcd, the rest in `aside`."""
    document = cluster.inventory()
    children = document["all"]["children"]  # type: ignore[index]
    hosts = children["etcd"]["hosts"]
    names = list(hosts)
    children["etcd"]["hosts"] = {name: hosts[name] for name in names[:voters]}
    children[aside] = {"hosts": {name: hosts[name] for name in names[voters:]}}
    (directory / "hosts.yml").write_text(json.dumps(document, indent=2) + "\n")
    return directory


@contextmanager
def writes_through(cluster: Cluster, members: list[str]) -> Iterator[dict[str, object]]:
    """The control-plane host writes distinct keys through `members` while the block runs; the dict
    is filled at the end with etcd-probe watch-writes' report (attempts, failed, acknowledged, lost)."""
    stop_file = f"/tmp/bench-stop-writes-{uuid.uuid4()}"  # one per change: a used one stops the next writer
    addresses = cluster.member_addresses()
    endpoints = ",".join(f"https://{addresses[m]}:2379" for m in members)
    writer = subprocess.Popen(
        ["podman", "exec", cluster.client, "etcd-probe", "watch-writes", "--endpoints", endpoints,
         "--stop-file", stop_file, "--distinct-keys", *CLIENT_TLS],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    report: dict[str, object] = {}
    try:
        yield report
    finally:
        run(["podman", "exec", cluster.client, "touch", stop_file])
        stdout, _ = writer.communicate(timeout=120)
        report.update(json.loads(stdout))


@dataclass(frozen=True)
class MembershipChange:
    name: str
    seconds: float
    attempts: int
    failed: int
    lost: int
    longest_write_seconds: float


def membership_change(name: str, seconds: float, writes: dict[str, object]) -> MembershipChange:
    """One timed change and what the writing client saw; a write that failed or was lost stops the bench."""
    lost = writes.get("lost")
    # No write at all is no evidence that writes went through: the client did not run.
    if not writes.get("attempts") or writes.get("failed") or lost is None or lost:
        raise SystemExit(f"{name}: the client's writes were not all kept: {writes}")
    return MembershipChange(
        name,
        round(seconds, 1),
        int(str(writes["attempts"])),
        int(str(writes["failed"])),
        int(str(lost)),
        float(str(writes["longest_write_seconds"])),
    )


def membership_table(changes: list[MembershipChange]) -> str:
    rows = [
        "| change | run, s | client writes | failed | lost | longest write, s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    rows += [
        "| "
        + " | ".join([c.name, f"{c.seconds:.0f}", str(c.attempts), str(c.failed), str(c.lost)])
        + f" | {c.longest_write_seconds:.3f} |"
        for c in changes
    ]
    return "\n".join(rows)


def membership_part(args: argparse.Namespace) -> dict[str, object]:
    cluster = Cluster("bench-members", MEMBERSHIP_VOTERS + MEMBERSHIP_ADDED, "tmpfs", "10.90.60.0/24")
    names = list(cluster.member_addresses())
    kept, added = names[:MEMBERSHIP_VOTERS], names[MEMBERSHIP_VOTERS:]
    changes: list[MembershipChange] = []
    with running(cluster, keep=args.keep) as inventory:
        # Every container runs (lab_up saw all five in group etcd); the cluster starts with three.
        membership_inventory(cluster, inventory, MEMBERSHIP_VOTERS, "etcd_spare")
        ansible_playbook(inventory, "playbooks/site.yml")
        ansible_playbook(inventory, "playbooks/bench_client.yml")
        membership_inventory(cluster, inventory, len(names), "etcd_spare")
        with writes_through(cluster, kept) as writes:
            seconds, _ = ansible_playbook(inventory, "playbooks/site.yml")
        changes.append(membership_change(f"add {', '.join(added)} (site.yml)", seconds, writes))
        membership_inventory(cluster, inventory, MEMBERSHIP_VOTERS, RETIRED_GROUP)
        with writes_through(cluster, kept) as writes:
            seconds, _ = ansible_playbook(
                inventory,
                "playbooks/remove_member.yml",
                "-e",
                f"etcd_remove_member={','.join(reversed(added))}",
            )
        changes.append(
            membership_change(f"remove {', '.join(reversed(added))} (remove_member.yml)", seconds, writes)
        )
        for change in changes:
            print(f"{cluster.name}: {change}", flush=True)
    return {"changes": [asdict(c) for c in changes], "table": membership_table(changes)}


# ---------------------------------------------------------------------------------------------


def machine() -> dict[str, object]:
    memory_kib = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(memory_kib / 1024 / 1024, 1),
        "platform": platform.platform(),
        "podman": run(["podman", "--version"]).stdout.strip(),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("hardening", "scale", "membership", "all"), default="all")
    parser.add_argument("--rounds", type=int, default=3, help="load rounds per cluster (part hardening)")
    parser.add_argument(
        "--perf-load", choices=("s", "m", "l", "xl"), default="l", help="etcdctl check perf --load"
    )
    parser.add_argument("--latency-count", type=int, default=1000, help="timed puts, and reads, per round")
    parser.add_argument(
        "--sizes",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[3, 5, 7],
        help="members, e.g. 3,5,7",
    )
    parser.add_argument("--results", type=Path, default=REPO / "results")
    parser.add_argument("--keep", action="store_true", help="leave the benchmark's containers running")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.latency_count < 1 or min(args.sizes) < 1:
        parser.error("--rounds, --latency-count and --sizes must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.results.mkdir(parents=True, exist_ok=True)
    about = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "machine": machine()}
    print(f"{about['date']} on {json.dumps(about['machine'])}", flush=True)
    reports: list[tuple[str, dict[str, object]]] = []
    if args.part in ("hardening", "all"):
        reports.append(("hardening", hardening_part(args)))
    if args.part in ("scale", "all"):
        reports.append(("scale", scale_part(args)))
    if args.part in ("membership", "all"):
        reports.append(("membership", membership_part(args)))
    for part, report in reports:
        out = args.results / f"bench-{part}.json"
        out.write_text(json.dumps({**about, **report}, indent=2) + "\n")
        print(f"\n## {part} ({out.relative_to(REPO) if out.is_relative_to(REPO) else out})\n")
        print(report["table"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
