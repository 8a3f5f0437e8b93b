"""Each role reads only the variables it declares (issue 19): its argument specs, defaults and vars,
what it registers or sets itself, and Ansible's own names.

Every Jinja expression in a role (task values, conditions, vars, defaults, templates) is parsed and
its free variables compared with those. What a role reads today without declaring it is listed in
UNDECLARED_TODAY, so that the list can only shrink: a new undeclared read fails, and so does an
entry that is no longer read. The check sees top-level names only: `hostvars[host].x` counts as a
read of `hostvars`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ROLES = sorted(p.parent.parent for p in REPO.glob("roles/*/meta/argument_specs.yml"))

# Keys whose value Ansible evaluates as a bare Jinja expression.
CONDITIONS = {"when", "failed_when", "changed_when", "until", "that"}
# Names Ansible itself provides to every task.
MAGIC = {
    "hostvars", "groups", "group_names", "inventory_hostname", "inventory_hostname_short", "inventory_dir",
    "play_hosts", "role_path", "role_name", "playbook_dir", "item", "omit", "lookup", "query", "q", "now",
    "undef", "environment", "vars",
    # `{% set _ = list.append(x) %}`, Jinja's way to call a method for its effect.
    "_",
}  # fmt: skip

# The reads issue 19 is to remove (role -> names it reads from other roles or the play). Remove an
# entry when its read goes; never add one: give the role a declared input instead.
UNDECLARED_TODAY: dict[str, set[str]] = {
    # Facts other roles set for the etcd role to read.
    "etcd": {"etcd_apparmor_restart_needed", "etcd_pki_changed", "etcd_storage_ready_at_boot"},
    # The etcd role's variables, read from play scope.
    "etcd_apparmor": {"etcd_cert_dir", "etcd_cluster_name", "etcd_data_dir", "etcd_members_group"},
    "etcd_firewall": {"etcd_client_port", "etcd_metrics_port", "etcd_peer_port"},
    "etcd_storage": {"etcd_cluster_name", "etcd_data_dir", "etcd_members_group", "etcd_user"},
    "etcd_pki": {"etcd_address", "etcd_cluster_name"},
    "kube_apiserver_etcd": {
        "etcd_client_port", "etcd_cluster_name", "etcd_members_group", "etcd_pki_client_ca_path",
        "etcd_pki_client_dir",
    },
    # Every role's expected.yml, included with public: true.
    "etcd_audit": {
        "etcd_apparmor_expected", "etcd_expected", "etcd_firewall_enabled", "etcd_firewall_expected",
        "etcd_firewall_table", "etcd_pki_expected", "etcd_storage_expected",
    },
    # The lab's container addresses, the lab_podman role's inventory variable.
    "lab_control_plane": {"lab_podman_ipv4"},
}  # fmt: skip


class AnyName(dict[str, Callable[..., object]]):
    """Ansible's filters and tests, as far as parsing goes: every name is known."""

    def __contains__(self, name: object) -> bool:
        return True

    def get(self, name: str, default: object = None) -> Callable[..., object]:
        return _anything


def _anything(*args: object, **kwargs: object) -> None:
    return None


ENV = jinja2.Environment(extensions=["jinja2.ext.do", "jinja2.ext.loopcontrols"])
ENV.filters = AnyName()
ENV.tests = AnyName()  # type: ignore[assignment]  # jinja2 types it as dict[str, function]


def free_names(text: str) -> set[str]:
    try:
        with warnings.catch_warnings():
            # A regex such as '\S+' in a Jinja string literal: Python warns of the escape, Jinja keeps it.
            warnings.simplefilter("ignore", DeprecationWarning)
            return set(jinja2.meta.find_undeclared_variables(ENV.parse(text)))
    except jinja2.TemplateSyntaxError as error:
        raise AssertionError(f"cannot parse {text!r}: {error}") from error


def expressions(node: object, key: str = "") -> Iterator[str]:
    """Every templated string under a YAML node; conditions become templates."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from expressions(v, str(k))
    elif isinstance(node, list):
        for v in node:
            yield from expressions(v, key)
    elif isinstance(node, str):
        if key in CONDITIONS and "{{" not in node:
            yield "{{ " + node + " }}"
        elif "{{" in node or "{%" in node:
            yield node
    elif isinstance(node, bool | int | float) or node is None:
        return


def defined_names(node: object) -> Iterator[str]:
    """Names a role's own tasks bring into being: registers, facts, loop and task variables."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "register" and isinstance(v, str):
                yield v
            elif k in ("ansible.builtin.set_fact", "set_fact") and isinstance(v, dict):
                yield from (n for n in v if n != "cacheable")
            elif k == "loop_control" and isinstance(v, dict) and "loop_var" in v:
                yield v["loop_var"]
            elif k == "vars" and isinstance(v, dict):
                yield from v
            yield from defined_names(v)
    elif isinstance(node, list):
        for v in node:
            yield from defined_names(v)


def load_yaml(path: Path) -> Any:  # noqa: ANN401 - YAML of any shape
    return yaml.safe_load(path.read_text()) or {}


def declared(role: Path) -> set[str]:
    names: set[str] = set()
    specs = load_yaml(role / "meta/argument_specs.yml")["argument_specs"]
    for entry in specs.values():
        names |= set(entry.get("options") or {})
    for folder in ("defaults", "vars"):
        for path in sorted((role / folder).glob("*.yml")):
            names |= set(load_yaml(path))
    for path in sorted((role / "tasks").glob("*.yml")):
        names |= set(defined_names(load_yaml(path)))
    return names


def reads(role: Path) -> set[str]:
    names: set[str] = set()
    for folder in ("tasks", "defaults", "vars", "handlers"):
        for path in sorted((role / folder).glob("*.yml")):
            for text in expressions(load_yaml(path)):
                names |= free_names(text)
    for path in sorted((role / "templates").rglob("*.j2")):
        names |= free_names(path.read_text())
    return names


def undeclared(role: Path) -> set[str]:
    return {n for n in reads(role) - declared(role) - MAGIC if not n.startswith("ansible_")}


@pytest.mark.parametrize("role", ROLES, ids=[r.name for r in ROLES])
def test_a_role_reads_only_what_it_declares(role: Path) -> None:
    found = undeclared(role)
    known = UNDECLARED_TODAY.get(role.name, set())
    assert not found - known, f"{role.name} reads undeclared variables: {sorted(found - known)}"
    assert not known - found, f"{role.name} no longer reads {sorted(known - found)}: take them off the list"


def test_the_check_finds_a_read_of_another_roles_variable(tmp_path: Path) -> None:
    role = tmp_path / "roles/demo"
    for folder, text in {
        "meta/argument_specs.yml": "argument_specs:\n  main:\n    options:\n      demo_port: {type: int}\n",
        "defaults/main.yml": "demo_port: 1\n",
        "tasks/main.yml": (
            "- name: Use a port\n  ansible.builtin.debug:\n    msg: '{{ demo_port }} {{ other_port }}'\n"
            "  register: __demo_out\n  when: __demo_out is defined and other_flag\n"
        ),
        "templates/demo.j2": "{% for x in demo_list_of_another %}{{ x }}{% endfor %}\n",
    }.items():
        (role / folder).parent.mkdir(parents=True, exist_ok=True)
        (role / folder).write_text(text)
    assert undeclared(role) == {"other_port", "other_flag", "demo_list_of_another"}
