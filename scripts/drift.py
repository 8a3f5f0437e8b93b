#!/usr/bin/env python3
"""Drift check: run a playbook in check mode with --diff and list what a real run would change.

CI re-runs the toolkit to catch drift (a key's mode loosened, client-cert-auth switched off to debug,
the firewall table deleted). This runs `ansible-playbook --check --diff` with Ansible's JSON output
(the ansible.posix.json callback, not coloured text), prints one line per host and task that would
change, and exits:

    0  nothing would change
    1  drift: at least one task would change something
    2  the run itself failed (a task failed or a host was unreachable): no verdict

    drift.py -i inventory/lab                          # playbooks/site.yml
    drift.py -i inventory/prod --limit etcd --report drift.json -- -e etcd_tls_profile=modern

Diffs of file contents are summarised (how many lines change), not printed: a template may hold
what should not land in a CI log. Tasks with no_log show only that they would change.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Change:
    host: str
    task: str
    what: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Verdict:
    changes: list[Change]
    failures: list[str]

    @property
    def exit_code(self) -> int:
        if self.failures:
            return 2
        return 1 if self.changes else 0


def describe_diff(diff: dict[str, Any]) -> list[str]:
    """One short line for one of Ansible's diff dicts (before/after, with optional headers)."""
    before, after = diff.get("before"), diff.get("after")
    # The destination: a template's after_header is the controller's temporary copy.
    path = diff.get("before_header") or diff.get("after_header") or ""
    if isinstance(before, dict) or isinstance(after, dict):
        old, new = before or {}, after or {}
        where = old.get("path") or new.get("path") or path
        keys = [key for key in sorted(set(old) | set(new)) if key != "path" and old.get(key) != new.get(key)]
        return [f"{where}: {key} {old.get(key, '(none)')} -> {new.get(key, '(none)')}" for key in keys]
    if isinstance(before, str) or isinstance(after, str):
        old_lines = (before or "").splitlines()
        new_lines = (after or "").splitlines()
        removed = len([line for line in old_lines if line not in new_lines])
        added = len([line for line in new_lines if line not in old_lines])
        if not old_lines and new_lines:
            return [f"{path or 'content'}: would be created ({len(new_lines)} lines)"]
        return [f"{path or 'content'}: {removed} line(s) removed, {added} added"]
    if diff.get("prepared"):
        return [line for line in str(diff["prepared"]).splitlines() if line.strip()][:5]
    return []


def describe_result(result: dict[str, Any]) -> list[str]:
    if result.get("censored"):
        return ["(no_log: details hidden)"]
    diffs = result.get("diff") or []
    if isinstance(diffs, dict):
        diffs = [diffs]
    lines = [line for diff in diffs for line in describe_diff(diff)]
    if "item" in result and not lines:
        lines = [f"item {json.dumps(result['item'], sort_keys=True)[:120]}"]
    return lines or [str(result.get("msg") or "would change")[:200]]


def _results_of(result: dict[str, Any]) -> Iterable[dict[str, Any]]:
    """A looped task's per-item results, or the result itself."""
    items = result.get("results")
    if isinstance(items, list) and items and all(isinstance(item, dict) for item in items):
        return items
    return [result]


def verdict_of(report: dict[str, Any]) -> Verdict:
    """Read ansible.posix.json's report: every changed host/task, and every failure."""
    changes: list[Change] = []
    failures: list[str] = []
    for play in report.get("plays", []):
        for task in play.get("tasks", []):
            name = task["task"]["name"]
            for host, result in task.get("hosts", {}).items():
                if result.get("unreachable"):
                    failures.append(f"{host}: unreachable during '{name}': {result.get('msg', '')}")
                    continue
                if result.get("failed") and not result.get("ignore_errors"):
                    why = [str(item.get("msg", "")) for item in _results_of(result) if item.get("failed")]
                    failures.append(f"{host}: '{name}' failed: {' / '.join(why)[:600]}")
                    continue
                if not result.get("changed"):
                    continue
                what = [
                    line
                    for item in _results_of(result)
                    if item is result or item.get("changed")
                    for line in describe_result(item)
                ]
                changes.append(Change(host=host, task=name, what=what or ["would change"]))
    for host, stats in report.get("stats", {}).items():
        if stats.get("unreachable") and not any(f.startswith(f"{host}:") for f in failures):
            failures.append(f"{host}: unreachable")
        if stats.get("failures") and not any(f.startswith(f"{host}:") for f in failures):
            failures.append(f"{host}: {stats['failures']} task(s) failed")
    return Verdict(changes=changes, failures=failures)


def render(verdict: Verdict) -> str:
    lines: list[str] = []
    for change in verdict.changes:
        lines.append(f"DRIFT  {change.host}  {change.task}")
        lines.extend(f"         {what}" for what in change.what)
    lines.extend(f"FAILED {failure}" for failure in verdict.failures)
    hosts = sorted({change.host for change in verdict.changes})
    if verdict.failures:
        lines.append(f"no verdict: the check run failed ({len(verdict.failures)} failure(s))")
    elif verdict.changes:
        lines.append(
            f"drift: {len(verdict.changes)} task(s) would change {len(hosts)} host(s): {', '.join(hosts)}"
        )
    else:
        lines.append("no drift: a real run would change nothing")
    return "\n".join(lines)


def run_check(playbook: Path, ansible_args: Sequence[str]) -> dict[str, Any] | None:
    env = dict(
        os.environ,
        ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
        ANSIBLE_JSON_INDENT="0",
        ANSIBLE_CONFIG=os.environ.get("ANSIBLE_CONFIG", str(REPO / "ansible.cfg")),
    )
    # Other callbacks (profile_tasks) would print into the JSON.
    env.pop("ANSIBLE_CALLBACKS_ENABLED", None)
    command = [str(Path(sys.executable).parent / "ansible-playbook"), str(playbook), "--check", "--diff"]
    completed = subprocess.run(
        [*command, *ansible_args], env=env, capture_output=True, text=True, check=False
    )
    sys.stderr.write(completed.stderr)
    start = completed.stdout.find("{")
    if start < 0:
        sys.stderr.write(f"ansible-playbook printed no report (exit {completed.returncode}):\n")
        sys.stderr.write(completed.stdout)
        return None
    report: dict[str, Any] = json.loads(completed.stdout[start:])
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-i", "--inventory", required=True, help="inventory to check")
    parser.add_argument("--playbook", type=Path, default=REPO / "playbooks/site.yml")
    parser.add_argument("--limit", help="hosts to check (ansible-playbook --limit)")
    parser.add_argument("--report", type=Path, help="also write the verdict as JSON to this file")
    parser.add_argument("ansible_args", nargs="*", help="after --: more ansible-playbook arguments")
    args = parser.parse_args(argv)
    ansible_args = [
        "-i",
        args.inventory,
        *(["--limit", args.limit] if args.limit else []),
        *args.ansible_args,
    ]
    report = run_check(args.playbook, ansible_args)
    if report is None:
        return 2
    verdict = verdict_of(report)
    print(render(verdict))
    if args.report:
        args.report.write_text(
            json.dumps(
                {"changes": [asdict(change) for change in verdict.changes], "failures": verdict.failures},
                indent=2,
            )
            + "\n"
        )
    return verdict.exit_code


if __name__ == "__main__":
    sys.exit(main())
