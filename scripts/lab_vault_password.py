#!/usr/bin/env python3
"""Print the lab's ansible-vault password, creating a random one on first use.

Ansible runs a vault password file that is executable and reads the password from its output:
point ANSIBLE_VAULT_PASSWORD_FILE here for the lab and the VM tier (never for a real cluster, whose
password belongs in the operator's own secret store). The password lives in .lab/ (git-ignored).
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

PASSWORD_FILE = Path(__file__).resolve().parents[1] / ".lab" / "vault-password"


def lab_password(path: Path = PASSWORD_FILE) -> str:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Created 0600 from the start, never readable by others even for a moment.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip()


def main() -> int:
    print(lab_password())
    return 0


if __name__ == "__main__":
    sys.exit(main())
