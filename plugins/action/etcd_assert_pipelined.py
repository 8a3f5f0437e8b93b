"""Action etcd_assert_pipelined: fail unless modules reach this host on stdin, never as files.

Without pipelining Ansible writes each module, with its arguments, to a file on the target (and keeps
it with ANSIBLE_KEEP_REMOTE_FILES). Tasks that hand a module a secret (a CA passphrase, a LUKS key, the
Secrets encryption keys) would leave it on that disk: on a node, or on the controller for tasks
delegated to localhost. Whether Ansible pipelines is decided by the connection the task really uses
(its plugin, its pipelining option, the become method, ANSIBLE_KEEP_REMOTE_FILES), so this asks that
connection rather than guessing from variables. Run it with the same connection (and delegate_to)
as the tasks it guards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ansible import constants
from ansible.plugins.action import ActionBase


def reasons_not_pipelined(
    *, plugin: str, has_pipelining: bool, option: bool | None, become_method: str | None,
    become_pipelines: bool, keep_remote_files: bool,
) -> list[str]:  # fmt: skip
    """Why a connection would write module files; empty when it pipelines."""
    reasons = []
    if not has_pipelining:
        reasons.append(f"the connection plugin '{plugin}' cannot pipeline")
    elif not option:
        reasons.append(f"pipelining is off for connection '{plugin}' (ansible.cfg [connection] pipelining)")
    if become_method and not become_pipelines:
        reasons.append(f"become method '{become_method}' turns pipelining off")
    if keep_remote_files:
        reasons.append("ANSIBLE_KEEP_REMOTE_FILES keeps every module file")
    return reasons


RAM_FILESYSTEMS = ("tmpfs", "ramfs")


def filesystem_of(path: str, mounts: str) -> str:
    """The type of the filesystem that holds `path`, from /proc/mounts text (longest mount point wins)."""
    best, kind = "", "unknown"
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def controller_temp_reason(local_tmp: str, mounts: str) -> list[str]:
    """Why the controller's temporary files (templates rendered with keys) would reach a disk."""
    kind = filesystem_of(str(Path(local_tmp).resolve()), mounts)
    if kind in RAM_FILESYSTEMS:
        return []
    return [
        f"the controller's temporary directory {local_tmp} is on {kind}, not in RAM (ansible.cfg local_tmp)"
    ]


class ActionModule(ActionBase):  # type: ignore[misc]  # ansible ships no type hints
    """Fail, naming each reason, when this host's connection would write modules to its disk."""

    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("what", "controller"))

    def run(self, tmp: str | None = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result: dict[str, Any] = super().run(tmp, task_vars)
        connection = self._connection
        try:
            option = bool(connection.get_option("pipelining"))
        except KeyError:
            option = bool(getattr(self._play_context, "pipelining", False))
        become = connection.become
        reasons = reasons_not_pipelined(
            plugin=str(getattr(connection, "_load_name", connection.transport)),
            has_pipelining=bool(connection.has_pipelining or connection.always_pipeline_modules),
            option=option or bool(connection.always_pipeline_modules),
            become_method=str(become.name) if become else None,
            become_pipelines=bool(become.pipelining) if become else True,
            keep_remote_files=bool(constants.DEFAULT_KEEP_REMOTE_FILES),
        )
        # The connection's own verdict must agree: a plugin may override it.
        if not reasons and not connection.is_pipelining_enabled():
            reasons.append("the connection says it will not pipeline")
        # Templates and copies with content are rendered into the controller's temporary directory
        # before they travel: where they hold keys, that directory must be in RAM.
        if self._task.args.get("controller"):
            mounts = Path("/proc/mounts").read_text() if Path("/proc/mounts").exists() else ""
            reasons += controller_temp_reason(constants.DEFAULT_LOCAL_TMP, mounts)
        what = self._task.args.get("what", "secrets")
        host = (task_vars or {}).get("inventory_hostname", "this host")
        if reasons:
            result["failed"] = True
            result["msg"] = (
                f"Refusing to hand {what} to modules on {host}: Ansible would write them to a file on a"
                f" disk, because {'; and '.join(reasons)}. Nothing was"
                " changed. Turn pipelining on ([connection] pipelining = True in ansible.cfg, or"
                " ansible_pipelining: true), use a become method that pipelines (sudo), unset"
                " ANSIBLE_KEEP_REMOTE_FILES, and keep the controller's local_tmp in RAM."
            )
        else:
            result["msg"] = f"modules reach {host} on stdin only"
        result["changed"] = False
        return result
