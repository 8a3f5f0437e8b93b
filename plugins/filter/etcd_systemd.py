"""Filter etcd_mount_unit: the mount unit of a path, as `systemd-escape --path --suffix=mount` names it.

Worked out on the controller: asking each host costs a module run per member on every play run.
"""

from __future__ import annotations

import posixpath
import string
from typing import Any

# Characters systemd keeps as they are in a unit name (a '.' only when it is not the first one).
_KEPT = frozenset(string.ascii_letters + string.digits + ":_.")


def etcd_mount_unit(path: str) -> str:
    """The mount unit of an absolute path: slashes become '-', anything else unusual \\xNN."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError(f"a mount point must be an absolute path, not {path!r}")
    simplified = posixpath.normpath(path).strip("/")
    if simplified in ("", "."):
        return "-.mount"
    escaped = "".join(
        "-"
        if char == "/"
        else char
        if char in _KEPT and not (char == "." and index == 0)
        else f"\\x{ord(char):02x}"
        for index, char in enumerate(simplified)
    )
    return f"{escaped}.mount"


class FilterModule:
    """systemd names worked out on the controller."""

    def filters(self) -> dict[str, Any]:
        return {"etcd_mount_unit": etcd_mount_unit}
