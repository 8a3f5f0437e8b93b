#!/usr/bin/python
"""Ansible module: read what a host holds of its etcd PKI in one pass, without any private key."""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path
from typing import Any

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: etcd_pki_read
short_description: Read a host's etcd PKI files in one pass, returning public material only
description:
  - Reads every key, certificate, CA certificate and directory the etcd_pki role manages on a host in one
    module run, so a run that changes nothing costs one remote task instead of five per certificate.
  - For a private key it returns the public key and the key's algorithm, never the private key.
  - For certificates and CA certificates it returns their text (public). For every path it returns
    whether it exists, its type, mode, owner and group.
  - Reads only; changes nothing. The role compares the result on the controller (filter
    C(etcd_pki_stale)) and runs its full per-certificate tasks only where something differs.
options:
  private_keys:
    description: Paths of private keys; their public halves are returned.
    type: list
    elements: path
    default: []
  public_files:
    description: Paths of certificates and CA certificates; their text is returned.
    type: list
    elements: path
    default: []
  directories:
    description: Paths of directories; only their type, mode and ownership are returned.
    type: list
    elements: path
    default: []
"""

RETURN = r"""
files:
  description:
    - One entry per path given, with C(exists), C(type) (file, directory or other), C(mode) (octal
      string), C(owner) and C(group).
    - Public files add C(content). Private keys add C(key_type) (ECC, RSA or other), C(curve), C(size)
      and C(public_key) (PEM), or C(error) when the key cannot be loaded.
  returned: always
  type: dict
"""

# A certificate or CA certificate bigger than this is not one the role wrote.
_MAX_PUBLIC_FILE = 64 * 1024


def describe_path(path: str) -> dict[str, Any]:
    """Existence, type, mode and ownership of a path, without following a final symlink."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return {"exists": False}
    kind = "file" if stat.S_ISREG(st.st_mode) else "directory" if stat.S_ISDIR(st.st_mode) else "other"
    return {
        "exists": True,
        "type": kind,
        "mode": f"{stat.S_IMODE(st.st_mode):04o}",
        "owner": _user(st.st_uid),
        "group": _group(st.st_gid),
        "size": st.st_size,
    }


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def read_public_file(path: str) -> dict[str, Any]:
    entry = describe_path(path)
    if entry.get("type") == "file" and entry["size"] <= _MAX_PUBLIC_FILE:
        entry["content"] = Path(path).read_text(encoding="ascii", errors="replace")
    return entry


def read_private_key(path: str) -> dict[str, Any]:
    """The key's public half and algorithm; the private key itself never leaves this function."""
    entry = describe_path(path)
    if entry.get("type") != "file":
        return entry
    # Imported here so a host without cryptography fails with the role's own message, below.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (ValueError, TypeError) as error:
        # The error names the problem (e.g. encrypted, not PEM), never the key's bytes.
        entry["error"] = type(error).__name__
        return entry
    if isinstance(key, ec.EllipticCurvePrivateKey):
        entry.update(key_type="ECC", curve=key.curve.name, size=key.curve.key_size)
    elif isinstance(key, rsa.RSAPrivateKey):
        entry.update(key_type="RSA", curve=None, size=key.key_size)
    else:
        entry.update(key_type="other", curve=None, size=None)
    entry["public_key"] = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )
    return entry


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "private_keys": {"type": "list", "elements": "path", "default": []},
            "public_files": {"type": "list", "elements": "path", "default": []},
            "directories": {"type": "list", "elements": "path", "default": []},
        },
        supports_check_mode=True,
    )
    try:
        import cryptography  # noqa: F401
    except ImportError:
        module.fail_json(msg="Python's cryptography package is missing on the host (python3-cryptography).")
    files: dict[str, dict[str, Any]] = {}
    for path in module.params["directories"]:
        files[path] = describe_path(path)
    for path in module.params["public_files"]:
        files[path] = read_public_file(path)
    for path in module.params["private_keys"]:
        files[path] = read_private_key(path)
    module.exit_json(changed=False, files=files)


if __name__ == "__main__":
    main()
