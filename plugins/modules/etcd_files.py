#!/usr/bin/python
"""Ansible module: a role's directories and files on one host, in one module run."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: etcd_files
short_description: Make a role's directories and files on a host match what the role wants, in one run
description:
  - Does for a list of directories and files what C(ansible.builtin.file) and C(ansible.builtin.template)
    do one at a time, each of which costs two module runs per file on a no-op (a stat, then a file call),
    and module runs are most of a run's time here (about 0.3 s per host each).
  - Give each file's content rendered on the controller (C(lookup('ansible.builtin.template', ...))).
  - A file is written atomically (a temporary file in its directory, renamed over it) with its owner,
    group and mode set before its content. With I(validate) the temporary file is checked first, so a
    content that fails the check never replaces the old one.
  - Directories are created with their owner, group and mode, and put back to them when they differ.
    Missing parents of a directory are made as C(mkdir -p) makes them (root's, 0755); those of a file
    are not, so list its directory.
  - Order: directories, then files, then the paths to remove, each in the order given.
  - Supports check mode and diff mode; the diff shows contents and attributes as the template and file
    modules show theirs.
  - Not for secrets: a file's content is a module argument, which C(-vvv) shows.
options:
  directories:
    description: Directories, each with C(path), C(owner), C(group) and C(mode) (an octal string).
    type: list
    elements: dict
    default: []
  files:
    description: >-
      Files, each with C(dest), C(content), C(owner), C(group), C(mode) (an octal string), and optionally
      C(validate): a command as a list of arguments, one of them C(%s) (the new content's temporary file).
      Without C(content) only the attributes of an existing file are set (a missing one is an error).
    type: list
    elements: dict
    default: []
  absent:
    description: Paths to remove, after the directories and files are made (a directory with its content).
    type: list
    elements: str
    default: []
"""

RETURN = r"""
changed_paths:
  description: The directories and files that were (in check mode, would be) created or changed, in order.
  returned: always
  type: list
  elements: str
"""


class FilesError(Exception):
    """A wanted file or directory could not be checked or made."""


@dataclass(frozen=True)
class Attributes:
    mode: str
    owner: str
    group: str

    @classmethod
    def wanted(cls, item: dict[str, Any]) -> Attributes:
        return cls(f"{int(str(item['mode']), 8):04o}", str(item["owner"]), str(item["group"]))

    @classmethod
    def of(cls, st: os.stat_result) -> Attributes:
        return cls(f"{stat.S_IMODE(st.st_mode):04o}", _user_name(st.st_uid), _group_name(st.st_gid))

    def apply(self, path: Path) -> None:
        os.chown(path, *self.ids())
        path.chmod(int(self.mode, 8))

    def ids(self) -> tuple[int, int]:
        try:
            return pwd.getpwnam(self.owner).pw_uid, grp.getgrnam(self.group).gr_gid
        except KeyError as missing:
            raise FilesError(f"no such user or group: {missing}") from None


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _attribute_diff(path: Path, current: Attributes, wanted: Attributes) -> dict[str, Any]:
    """The attributes that differ, as the file module shows them."""
    keys = [key for key in ("mode", "owner", "group") if getattr(current, key) != getattr(wanted, key)]
    return {
        "before": {"path": str(path), **{key: getattr(current, key) for key in keys}},
        "after": {"path": str(path), **{key: getattr(wanted, key) for key in keys}},
    }


def ensure_directory(item: dict[str, Any], check_mode: bool) -> list[dict[str, Any]]:
    """Make one directory as wanted; returns its diffs (none when it already was)."""
    path = Path(item["path"])
    wanted = Attributes.wanted(item)
    wanted.ids()  # an unknown owner fails in check mode too
    try:
        st = path.lstat()
    except FileNotFoundError:
        if not check_mode:
            # Missing parents as `mkdir -p` makes them (root's, 0755); the directory itself is
            # private until its owner and mode are set.
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            path.mkdir(mode=0o700)
            wanted.apply(path)
        return [
            {
                "before": {"path": str(path), "state": "absent"},
                "after": {"path": str(path), "state": "directory"},
            }
        ]
    if not stat.S_ISDIR(st.st_mode):
        raise FilesError(f"{path} exists and is not a directory")
    current = Attributes.of(st)
    if current == wanted:
        return []
    if not check_mode:
        wanted.apply(path)
    return [_attribute_diff(path, current, wanted)]


def _validate(dest: Path, argv: list[str], candidate: Path) -> None:
    if "%s" not in argv:
        raise FilesError(f"validate must name the file as %s: {argv}")
    command = [str(candidate) if word == "%s" else word for word in argv]
    checked = subprocess.run(command, capture_output=True, text=True, check=False)
    if checked.returncode != 0:
        # The template module's words, which operators (and the tests) know.
        why = (checked.stderr or checked.stdout).strip()
        raise FilesError(f"{dest}: the new content failed to validate ({' '.join(argv)}): {why}")


def _current(dest: Path) -> tuple[bytes | None, Attributes | None]:
    """A file's content and attributes, or (None, None) when it does not exist."""
    try:
        st = dest.lstat()
    except FileNotFoundError:
        return None, None
    if not stat.S_ISREG(st.st_mode):
        raise FilesError(f"{dest} exists and is not a regular file")
    return dest.read_bytes(), Attributes.of(st)


def _write(dest: Path, content: bytes, wanted: Attributes, validate: list[str] | None) -> None:
    """Replace dest atomically: owner and mode are set before the content, all before the rename."""
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    candidate = Path(name)
    try:
        os.fchown(fd, *wanted.ids())
        os.fchmod(fd, int(wanted.mode, 8))
        with os.fdopen(fd, "wb") as new_file:
            new_file.write(content)
            new_file.flush()
            os.fsync(new_file.fileno())
        if validate:
            _validate(dest, validate, candidate)
        candidate.rename(dest)
    except BaseException:
        candidate.unlink(missing_ok=True)
        raise


def ensure_file(item: dict[str, Any], check_mode: bool, want_diff: bool) -> list[dict[str, Any]]:
    """Make one file as wanted; returns its diffs (none when it already was)."""
    dest = Path(item["dest"])
    wanted = Attributes.wanted(item)
    wanted.ids()
    current, current_attributes = _current(dest)
    if "content" not in item:
        # Attributes only, of a file someone else writes (a package's, say).
        if current is None:
            raise FilesError(f"{dest} does not exist")
        content = current
    else:
        content = str(item["content"]).encode()
    if current == content and current_attributes == wanted:
        return []
    diffs: list[dict[str, Any]] = []
    if current != content and want_diff:
        before = current.decode(errors="replace") if current is not None else ""
        diffs.append(
            {
                "before_header": str(dest),
                "after_header": str(dest),
                "before": before,
                "after": content.decode(),
            }
        )
    if current_attributes is not None and current_attributes != wanted:
        diffs.append(_attribute_diff(dest, current_attributes, wanted))
    if not check_mode:
        if current == content:
            wanted.apply(dest)
        else:
            _write(dest, content, wanted, item.get("validate"))
    return diffs or [{"prepared": f"{dest}: {'would change' if check_mode else 'changed'}"}]


def ensure_absent(path_name: str, check_mode: bool) -> list[dict[str, Any]]:
    """Remove one path (a file, a link or a whole directory); returns its diffs (none when it was absent)."""
    path = Path(path_name)
    try:
        st = path.lstat()
    except FileNotFoundError:
        return []
    kind = "directory" if stat.S_ISDIR(st.st_mode) else "link" if stat.S_ISLNK(st.st_mode) else "file"
    if not check_mode:
        if kind == "directory":
            shutil.rmtree(path)
        else:
            path.unlink()
    return [{"before": {"path": path_name, "state": kind}, "after": {"path": path_name, "state": "absent"}}]


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "directories": {"type": "list", "elements": "dict", "default": []},
            "files": {"type": "list", "elements": "dict", "default": []},
            "absent": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=True,
    )
    changed_paths: list[str] = []
    diffs: list[dict[str, Any]] = []
    try:
        for directory in module.params["directories"]:
            made = ensure_directory(directory, module.check_mode)
            if made:
                changed_paths.append(directory["path"])
                diffs.extend(made)
        for wanted_file in module.params["files"]:
            written = ensure_file(wanted_file, module.check_mode, module._diff)
            if written:
                changed_paths.append(wanted_file["dest"])
                diffs.extend(written)
        for path in module.params["absent"]:
            removed = ensure_absent(path, module.check_mode)
            if removed:
                changed_paths.append(path)
                diffs.extend(removed)
    except (FilesError, OSError, KeyError, ValueError) as error:
        module.fail_json(msg=f"{type(error).__name__}: {error}", changed_paths=changed_paths)
    module.exit_json(changed=bool(changed_paths), changed_paths=changed_paths, diff=diffs)


if __name__ == "__main__":
    main()
