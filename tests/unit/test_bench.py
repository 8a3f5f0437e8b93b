"""The benchmark reads Ansible's JSON callback, not coloured text."""

from __future__ import annotations

import sys
from pathlib import Path

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


def test_stats_sum_changes_and_failures_over_hosts() -> None:
    assert bench.playbook_stats(JSON_OUTPUT) == (5, 2, 3)


def test_table_shows_each_run_against_the_fresh_converge() -> None:
    runs = [bench.Run("fresh converge", 100.0, 40, 0, 5), bench.Run("no-op re-run", 50.0, 0, 0, 5)]
    text = bench.table(runs)
    assert "fresh converge" in text and "1.00" in text
    assert "no-op re-run" in text and "0.50" in text
