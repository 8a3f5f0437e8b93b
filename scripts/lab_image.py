#!/usr/bin/env python3
"""Build (once) the lab's node images from Debian's packages and import them into podman.

No container registry is reachable from our machines, so the image every lab and molecule
host boots is made here with mmdebstrap and `podman import`. Its tag carries a hash of the
recipe: the image is rebuilt only when the recipe changes, and `ensure` is otherwise a
cheap no-op that Ansible can call on every run.

    lab_image.py ensure --suite trixie      # prints {"image": ..., "built": ...} as JSON
    lab_image.py ref --suite bookworm       # the tag the recipe maps to, nothing built
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

IMAGE_REPOSITORY = "localhost/etcd-lab-node"

# What every node needs before Ansible arrives: systemd as PID 1, Python for Ansible's modules,
# python3-apt for the apt module and python3-cryptography for community.crypto's key and CSR
# modules (the roles install both anyway; baking them in keeps converges quick), plus the
# network tools the tests use. etcd itself is *not* baked in: the etcd role installs it.
BASE_PACKAGES: tuple[str, ...] = (
    "ca-certificates",
    "dbus",
    "iproute2",
    "nftables",
    "openssl",
    "procps",
    "python3",
    "python3-apt",
    "python3-cryptography",
    "systemd",
    "systemd-sysv",
)

# Units that cannot work inside a container and would leave systemd "degraded".
MASKED_UNITS: tuple[str, ...] = (
    "systemd-modules-load.service",
    "getty@tty1.service",
    "console-getty.service",
)

SUPPORTED_SUITES: tuple[str, ...] = ("trixie", "bookworm")


def recipe_digest(recipe: DataclassInstance) -> str:
    """A short hash of everything in a recipe dataclass: the name of what it builds."""
    canonical = json.dumps(asdict(recipe), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Recipe:
    """Everything that decides an image's content; its hash names the image."""

    suite: str
    packages: tuple[str, ...] = BASE_PACKAGES
    masked_units: tuple[str, ...] = MASKED_UNITS
    variant: str = "minbase"
    # Bump to force a rebuild when the build procedure itself changes.
    revision: int = 1
    extra: dict[str, str] = field(default_factory=dict)

    def digest(self) -> str:
        return recipe_digest(self)

    def image_ref(self) -> str:
        return f"{IMAGE_REPOSITORY}:{self.suite}-{self.digest()}"

    def mmdebstrap_command(self, target: Path) -> list[str]:
        hooks = [f'--customize-hook=chroot "$1" systemctl mask {unit}' for unit in self.masked_units]
        return [
            "mmdebstrap",
            f"--variant={self.variant}",
            f"--include={','.join(self.packages)}",
            *hooks,
            self.suite,
            str(target),
        ]

    def import_command(self, tarball: Path) -> list[str]:
        return [
            "podman",
            "import",
            "--change",
            'CMD ["/sbin/init"]',
            "--change",
            "STOPSIGNAL SIGRTMIN+3",
            str(tarball),
            self.image_ref(),
        ]


def recipe_for(suite: str) -> Recipe:
    if suite not in SUPPORTED_SUITES:
        raise ValueError(f"unsupported suite {suite!r}; choose one of {', '.join(SUPPORTED_SUITES)}")
    return Recipe(suite=suite)


def image_exists(ref: str) -> bool:
    return subprocess.run(["podman", "image", "exists", ref], check=False).returncode == 0


def stale_refs(recipe: Recipe) -> list[str]:
    """Older builds of the same suite: superseded recipes, safe to remove."""
    listing = subprocess.run(
        ["podman", "images", "--format", "{{.Repository}}:{{.Tag}}", IMAGE_REPOSITORY],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    prefix = f"{IMAGE_REPOSITORY}:{recipe.suite}-"
    return [ref for ref in listing if ref.startswith(prefix) and ref != recipe.image_ref()]


def build(recipe: Recipe) -> None:
    with tempfile.TemporaryDirectory(prefix="etcd-lab-image-") as workdir:
        tarball = Path(workdir) / f"{recipe.suite}.tar"
        subprocess.run(recipe.mmdebstrap_command(tarball), check=True, stdout=sys.stderr)
        subprocess.run(recipe.import_command(tarball), check=True, stdout=sys.stderr)
    for ref in stale_refs(recipe):
        # An image still used by a container cannot go; that is fine, it is only a cache.
        subprocess.run(["podman", "rmi", ref], check=False, capture_output=True)


def ensure(recipe: Recipe) -> dict[str, object]:
    started = time.monotonic()
    built = False
    if not image_exists(recipe.image_ref()):
        build(recipe)
        built = True
    return {
        "image": recipe.image_ref(),
        "built": built,
        "seconds": round(time.monotonic() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("ensure", "ref"))
    parser.add_argument("--suite", default="trixie", choices=SUPPORTED_SUITES)
    args = parser.parse_args(argv)
    recipe = recipe_for(args.suite)
    if args.action == "ref":
        print(recipe.image_ref())
        return 0
    print(json.dumps(ensure(recipe)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
