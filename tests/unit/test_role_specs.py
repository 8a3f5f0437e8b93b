"""Every role documents each public input in both defaults/main.yml and meta/argument_specs.yml."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROLES = sorted(
    p.parent.parent for p in Path(__file__).resolve().parents[2].glob("roles/*/meta/argument_specs.yml")
)


@pytest.mark.parametrize("role", ROLES, ids=[r.name for r in ROLES])
def test_defaults_and_argument_specs_list_the_same_inputs(role: Path) -> None:
    defaults = yaml.safe_load((role / "defaults/main.yml").read_text()) or {}
    specs = yaml.safe_load((role / "meta/argument_specs.yml").read_text())["argument_specs"]
    options = specs["main"]["options"]
    assert set(defaults) == set(options), (
        f"only in defaults: {set(defaults) - set(options)}; only in specs: {set(options) - set(defaults)}"
    )


@pytest.mark.parametrize("role", ROLES, ids=[r.name for r in ROLES])
def test_public_inputs_carry_the_role_prefix_and_a_description(role: Path) -> None:
    options = yaml.safe_load((role / "meta/argument_specs.yml").read_text())["argument_specs"]["main"][
        "options"
    ]
    prefix = role.name + "_"
    for name, spec in options.items():
        assert name.startswith(prefix), f"{name} lacks the {prefix} prefix"
        assert spec.get("description"), f"{name} has no description"


@pytest.mark.parametrize("role", ROLES, ids=[r.name for r in ROLES])
def test_every_default_has_a_comment_line(role: Path) -> None:
    lines = (role / "defaults/main.yml").read_text().splitlines()
    for i, line in enumerate(lines):
        if line and not line.startswith((" ", "#", "-")):
            assert lines[i - 1].startswith("#"), f"{role.name}: {line.split(':')[0]} has no comment above it"


def test_readme_role_variables_match_the_argument_specs() -> None:
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, str(repo / "scripts/role_docs.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout
