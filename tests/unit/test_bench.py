"""The benchmark reads Ansible's JSON callback and etcdctl's words, and reports spreads and ratios."""

from __future__ import annotations

import ipaddress
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import bench

JSON_OUTPUT = """[WARNING]: something printed before the JSON
{
  "plays": [],
  "stats": {
    "etcd-1": {"changed": 3, "failures": 0, "ok": 10, "unreachable": 0},
    "etcd-2": {"changed": 2, "failures": 1, "ok": 9, "unreachable": 0},
    "localhost": {"changed": 0, "failures": 0, "ok": 4, "unreachable": 1}
  }
}
"""

# etcdctl 3.5's words, after its progress bar.
PERF_PASS = """ 60 / 60 Booooooo! 100.00% 1m0s
PASS: Throughput is 151 writes/s
PASS: Slowest request took 0.087326s
PASS: Stddev is 0.008001s
PASS
"""
PERF_SATURATED = """ 60 / 60 Booooooo! 100.00% 1m0s
FAIL: Throughput too low: 1873 writes/s
Slowest request took too long: 1.204120s
Stddev too high: 0.130000s
FAIL
"""


def test_stats_sum_changes_and_failures_over_hosts() -> None:
    assert bench.playbook_stats(JSON_OUTPUT) == (5, 2, 3)


def test_check_perf_figures_are_read_whether_it_passed_or_not() -> None:
    assert bench.parse_check_perf(PERF_PASS) == {
        "perf_writes_per_s": 151.0,
        "perf_slowest_ms": pytest.approx(87.326),
    }
    # At a load the machine cannot reach, etcdctl says FAIL: the figures are the measurement.
    assert bench.parse_check_perf(PERF_SATURATED) == {
        "perf_writes_per_s": 1873.0,
        "perf_slowest_ms": pytest.approx(1204.12),
    }


def test_check_perf_with_failed_requests_or_no_result_is_refused() -> None:
    with pytest.raises(ValueError, match="failed requests"):
        bench.parse_check_perf(
            "FAIL: too many errors\nFAIL: ERROR(context deadline exceeded) -> 12\n" + PERF_SATURATED
        )
    with pytest.raises(ValueError, match="no result"):
        bench.parse_check_perf("Error: prefix /etcdctl-check-perf/ has keys\n")


def test_spread_is_median_min_max() -> None:
    spread = bench.Spread.of([3.0, 1.0, 2.0, 10.0])
    assert (spread.median, spread.low, spread.high) == (2.5, 1.0, 10.0)


def _figures(scale: float) -> dict[str, float]:
    return {metric: scale * (index + 1) for index, metric in enumerate(bench.METRICS)}


def test_hardening_table_gives_each_cluster_its_spread_and_ratio_to_plain() -> None:
    rounds = {
        "plain": [_figures(1.0), _figures(1.0), _figures(1.2)],
        "tmpfs": [_figures(2.0), _figures(1.8), _figures(2.2)],
    }
    table = bench.hardening_table(bench.summarize(rounds), "plain").splitlines()
    assert table[0] == (
        "| figure | plain (no TLS, disk): median [min-max] "
        "| hardened, tmpfs: median [min-max] | tmpfs / plain |"
    )
    assert table[1].count("---") == 4
    writes = next(line for line in table if line.startswith("| check perf: writes/s"))
    assert writes == "| check perf: writes/s | 1 [1-1] | 2 [2-2] | 2.00 |"
    put = next(line for line in table if line.startswith("| put latency p50"))
    assert put == "| put latency p50, ms | 3.00 [3.00-3.60] | 6.00 [5.40-6.60] | 2.00 |"


def test_scale_table_relates_each_size_to_the_smallest() -> None:
    runs = {
        3: [bench.Run("fresh converge", 100.0, 80, 0, 5), bench.Run("no-op re-run", 50.0, 0, 0, 5)],
        5: [bench.Run("fresh converge", 150.0, 120, 0, 7), bench.Run("no-op re-run", 80.0, 0, 0, 7)],
    }
    runs[5][1].module_runs = 15
    table = bench.scale_table(runs).splitlines()
    assert (
        table[0]
        == "| run | 3 members, s | 5 members, s | 5/3 | changed tasks | module runs per host (most) |"
    )
    assert table[2] == "| fresh converge | 100.0 | 150.0 | 1.50 | 80/120 | 0/0 |"
    assert table[3] == "| no-op re-run | 50.0 | 80.0 | 1.60 | 0/0 | 0/15 |"


def test_firewall_table_relates_each_run_to_the_first() -> None:
    runs = [bench.Run("no-op", 20.0, 0, 0, 5), bench.Run("50 added", 25.0, 3, 0, 5)]
    assert bench.firewall_table(runs).splitlines()[3] == "| 50 added | 25.0 | 1.25 | 3 |"


def test_a_cluster_inventory_names_and_addresses_its_hosts() -> None:
    cluster = bench.Cluster("bench-disk", 3, "disk", "10.90.42.0/24")
    hosts = cluster.inventory()["all"]["children"]
    assert hosts["etcd"]["hosts"] == {
        "bench-disk-1": {"lab_podman_ipv4": "10.90.42.11"},
        "bench-disk-2": {"lab_podman_ipv4": "10.90.42.12"},
        "bench-disk-3": {"lab_podman_ipv4": "10.90.42.13"},
    }
    assert hosts["kube_control_plane"]["hosts"] == {"bench-disk-api": {"lab_podman_ipv4": "10.90.42.21"}}
    assert cluster.endpoints()[0] == "https://10.90.42.11:2379"
    assert "--cert=/etc/kubernetes/pki/apiserver-etcd-client.crt" in cluster.client_tls()
    settings = cluster.group_vars()
    assert (settings["etcd_storage_mode"], settings["etcd_storage_allow_volatile_quorum"]) == ("disk", False)
    assert settings["lab_podman_network"] == "bench-disk" and settings["etcd_cluster_name"] == "bench-disk"


def test_the_plain_baseline_has_no_tls_and_no_hardening_settings() -> None:
    plain = bench.Cluster("bench-plain", 3, "plain", "10.90.41.0/24")
    assert plain.endpoints() == [f"http://10.90.41.1{i}:2379" for i in (1, 2, 3)]
    assert plain.client_tls() == ()
    assert "etcd_storage_mode" not in plain.group_vars()


def test_extra_client_sources_are_distinct_and_outside_the_lab_networks() -> None:
    sources = bench.extra_client_sources(50)
    assert len(set(sources)) == 50
    assert not any(ipaddress.ip_address(s) in ipaddress.ip_network("10.90.0.0/16") for s in sources)


def _task(name: str, start: str, end: str) -> dict[str, object]:
    return {"hosts": {}, "task": {"name": name, "duration": {"start": start, "end": end}}}


TIMED_OUTPUT = json.dumps(
    {
        "plays": [
            {
                "play": {"name": "Members"},
                "tasks": [
                    _task(
                        "etcd_pki : Read | keys", "2026-11-25T03:00:00.000000Z", "2026-11-25T03:00:02.500000Z"
                    ),
                    _task("etcd_pki : Issue", "2026-11-25T03:00:02.500000Z", "2026-11-25T03:00:03.000000Z"),
                    _task("Gather", "2026-11-25T03:00:03.000000Z", "2026-11-25T03:00:04.000000Z"),
                    _task("etcd : Start", "2026-11-25T03:00:04.000000Z", "2026-11-25T03:00:10.000000Z"),
                ],
            }
        ],
        "stats": {},
    }
)


def test_role_seconds_add_up_task_wall_times_per_role() -> None:
    assert bench.role_seconds("noise\n" + TIMED_OUTPUT) == {"etcd": 6.0, "etcd_pki": 3.0, "play tasks": 1.0}


def test_roles_table_puts_the_roles_that_cost_most_at_the_largest_size_first() -> None:
    runs = {
        3: [
            bench.Run("fresh", 1, 1, 0, 5),
            bench.Run("no-op re-run", 50, 0, 0, 5, {"etcd": 20.0, "etcd_pki": 10.0}),
        ],
        5: [
            bench.Run("fresh", 1, 1, 0, 7),
            bench.Run("no-op re-run", 80, 0, 0, 7, {"etcd": 25.0, "etcd_pki": 40.0}),
        ],
    }
    table = bench.roles_table(runs, 1).splitlines()
    assert table[0] == "| no-op re-run: role | 3 members, s | 5 members, s |"
    assert table[2:] == ["| etcd_pki | 10.0 | 40.0 |", "| etcd | 20.0 | 25.0 |"]


def test_the_membership_inventory_keeps_the_first_members_in_group_etcd(tmp_path: Path) -> None:
    cluster = bench.Cluster("bench-members", 5, "tmpfs", "10.90.60.0/24")
    bench.membership_inventory(cluster, tmp_path, 3, "etcd_retired")
    children = json.loads((tmp_path / "hosts.yml").read_text())["all"]["children"]
    assert list(children["etcd"]["hosts"]) == ["bench-members-1", "bench-members-2", "bench-members-3"]
    assert children["etcd_retired"]["hosts"] == {
        "bench-members-4": {"lab_podman_ipv4": "10.90.60.14"},
        "bench-members-5": {"lab_podman_ipv4": "10.90.60.15"},
    }
    assert list(children["kube_control_plane"]["hosts"]) == ["bench-members-api"]


def test_a_membership_change_is_reported_only_when_every_write_was_kept() -> None:
    kept = {"attempts": 812, "failed": 0, "acknowledged": 812, "lost": 0, "longest_write_seconds": 1.708}
    change = bench.membership_change("remove", 213.4, kept)
    assert change == bench.MembershipChange("remove", 213.4, 812, 0, 0, 1.708)
    assert bench.membership_table([change]).splitlines()[2] == "| remove | 213 | 812 | 0 | 0 | 1.708 |"
    # A failed write, a lost one, writes that could not be read back, or none at all stop the benchmark.
    for bad in ({"failed": 1}, {"lost": 2}, {"lost": None}, {"attempts": 0, "acknowledged": 0}):
        with pytest.raises(SystemExit, match="not all kept"):
            bench.membership_change("add", 300.0, {**kept, **bad})


def _ran(action: str, skipped: bool = False) -> dict[str, object]:
    return {"action": action, "skipped": skipped} if skipped else {"action": action}


def test_module_runs_count_what_reached_a_host_and_nothing_else() -> None:
    output = json.dumps(
        {
            "plays": [
                {
                    "play": {"name": "Members"},
                    "tasks": [
                        {
                            "task": {"name": "read"},
                            "hosts": {"m1": _ran("etcd_host_read"), "m2": _ran("etcd_host_read")},
                        },
                        {"task": {"name": "note"}, "hosts": {"m1": _ran("ansible.builtin.set_fact")}},
                        {
                            "task": {"name": "start"},
                            "hosts": {"m1": _ran("ansible.builtin.systemd_service", True)},
                        },
                        {
                            "task": {"name": "spec"},
                            "hosts": {"m2": _ran("ansible.builtin.validate_argument_spec")},
                        },
                        {
                            "task": {"name": "write"},
                            "hosts": {"m2": _ran("etcd_files"), "localhost": _ran("stat")},
                        },
                    ],
                }
            ],
            "stats": {},
        }
    )
    assert bench.module_runs("noise\n" + output) == {"m1": 1, "m2": 2, "localhost": 1}
