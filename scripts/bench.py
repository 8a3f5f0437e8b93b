#!/usr/bin/env python3
"""Time what the toolkit costs an operator on the lab: a fresh converge, a no-op re-run, check mode.

    bench.py [--inventory inventory/lab] [--results results/]

It removes and recreates the lab's containers first (so the converge is really fresh), then runs
playbooks/site.yml three times with Ansible's JSON callback and reads the per-host stats from it:
no scraping of coloured text. It prints a table and writes the figures as JSON under --results.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Run:
    name: str
    seconds: float
    changed: int
    failed: int
    hosts: int


def playbook_stats(json_output: str) -> tuple[int, int, int]:
    """Total changed and failed task counts, and the host count, from the JSON callback's output."""
    start = json_output.index("{")
    stats = json.loads(json_output[start:])["stats"]
    changed = sum(int(h.get("changed", 0)) for h in stats.values())
    failed = sum(int(h.get("failures", 0)) + int(h.get("unreachable", 0)) for h in stats.values())
    return changed, failed, len(stats)


def ansible_playbook(inventory: Path, playbook: str, *args: str, json_stats: bool) -> tuple[float, str]:
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    if json_stats:
        env.update(ANSIBLE_STDOUT_CALLBACK="ansible.posix.json")
    started = time.monotonic()
    result = subprocess.run(
        ["ansible-playbook", "-i", str(inventory), str(REPO / playbook), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        check=False,
    )
    seconds = time.monotonic() - started
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-5000:] + result.stderr[-5000:])
        raise SystemExit(f"{playbook} {' '.join(args)} failed with exit status {result.returncode}")
    return seconds, result.stdout


def measure(inventory: Path, name: str, *args: str) -> Run:
    seconds, output = ansible_playbook(inventory, "playbooks/site.yml", *args, json_stats=True)
    changed, failed, hosts = playbook_stats(output)
    return Run(name=name, seconds=round(seconds, 1), changed=changed, failed=failed, hosts=hosts)


def table(runs: list[Run]) -> str:
    fresh = runs[0].seconds
    lines = [
        f"{'run':<28} {'seconds':>8} {'vs fresh':>9} {'changed':>8} {'failed':>7}",
        f"{'-' * 28} {'-' * 8} {'-' * 9} {'-' * 8} {'-' * 7}",
    ]
    for r in runs:
        lines.append(f"{r.name:<28} {r.seconds:>8.1f} {r.seconds / fresh:>9.2f} {r.changed:>8} {r.failed:>7}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inventory", type=Path, default=REPO / "inventory/lab")
    parser.add_argument("--results", type=Path, default=REPO / "results")
    args = parser.parse_args(argv)

    ansible_playbook(args.inventory, "playbooks/lab_down.yml", json_stats=False)
    lab_seconds, _ = ansible_playbook(args.inventory, "playbooks/lab_up.yml", json_stats=False)
    runs = [
        measure(args.inventory, "fresh converge"),
        measure(args.inventory, "no-op re-run"),
        measure(args.inventory, "check mode (--check --diff)", "--check", "--diff"),
    ]
    report = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "lab_start_seconds": round(lab_seconds, 1),
        "runs": [asdict(r) for r in runs],
    }
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / "bench-toolkit.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"lab containers started in {lab_seconds:.1f} s ({os.cpu_count()} CPUs, {platform.platform()})")
    print(table(runs))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
