#!/usr/bin/env python3
"""Print the lab's ansible-vault password, creating a random one on first use.

Ansible runs a vault password file that is executable and reads the password from its output:
point ANSIBLE_VAULT_PASSWORD_FILE here for the lab and the VM tier (never for a real cluster, whose
password belongs in the operator's own secret store). The password lives in .lab/ (git-ignored).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
from pathlib import Path

PASSWORD_FILE = Path(__file__).resolve().parents[1] / ".lab" / "vault-password"


def lab_password(path: Path = PASSWORD_FILE) -> str:
    if not path.exists():
        _create_once(path)
    return path.read_text().strip()


def _create_once(path: Path) -> None:
    """Create the password file atomically: many first users at once (ansible-lint's parallel syntax
    checks, the scenarios of `make test -j2`) must all read the same, complete password."""
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    # Created 0600 from the start, never readable by others even for a moment.
    descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        # link() never replaces: the first complete password wins, later ones are dropped.
        with contextlib.suppress(FileExistsError):
            os.link(draft, path)
    finally:
        draft.unlink()


def main() -> int:
    print(lab_password())
    return 0


if __name__ == "__main__":
    sys.exit(main())
