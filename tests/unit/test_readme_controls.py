"""The README's controls table points at real things: each file a control is set in exists, and
each test named as its proof is defined in tests/ (a renamed or deleted test must take its claim
with it)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEADER = "| control | CIS id | role | set in | variable | proved by |"


def cells_of(row: str) -> list[str]:
    """A Markdown table row's cells; a `|` inside backticks belongs to its cell."""
    cells, current, in_code = [], "", False
    for char in row.strip()[1:-1]:
        if char == "`":
            in_code = not in_code
        if char == "|" and not in_code:
            cells.append(current.strip())
            current = ""
        else:
            current += char
    cells.append(current.strip())
    return cells


def control_rows() -> list[list[str]]:
    lines = (REPO / "README.md").read_text().splitlines()
    start = lines.index(HEADER) + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("| "):
            break
        rows.append(cells_of(line))
    return rows


ROWS = control_rows()
DEFINED_TESTS = {
    match.group(1)
    for path in (REPO / "tests").rglob("test_*.py")
    for match in re.finditer(r"^def (test_\w+)\(", path.read_text(), re.MULTILINE)
}


def code_spans(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def test_the_table_has_every_column_in_every_row() -> None:
    assert len(ROWS) > 30
    for row in ROWS:
        assert len(row) == len(cells_of(HEADER)), row[0]


@pytest.mark.parametrize("row", ROWS, ids=[r[0][:50] for r in ROWS])
def test_each_control_names_files_that_exist_and_tests_that_are_defined(row: list[str]) -> None:
    control, _, _, set_in, _, proved_by = row
    files = code_spans(set_in)
    assert files, f"{control[:60]}: no file named in 'set in'"
    for name in files:
        assert (REPO / name).exists(), f"{control[:60]}: {name} does not exist"
    for span in code_spans(proved_by):
        if re.fullmatch(r"test_\w+", span):
            assert span in DEFINED_TESTS, f"{control[:60]}: {span} is not a test in tests/"
        elif span.startswith("tests/"):
            assert (REPO / span.split(":")[0]).exists(), f"{control[:60]}: {span} does not exist"
