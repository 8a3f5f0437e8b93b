#!/usr/bin/env python3
"""Build (once) the VM test tier's disk image from Debian's packages, with its kernel beside it.

Containers share this machine's kernel, which has neither AppArmor nor device-mapper; a VM boots
Debian's own kernel, which has both. The image is a bare ext4 filesystem (no partition table, no
boot loader): qemu boots the kernel and initramfs taken out of it. Packages the play would install
are baked in, because dpkg under software emulation is 10-20 times slower than in a container.

The image directory is named after a hash of the recipe (packages, suite, the SSH key allowed in),
so it is rebuilt exactly when the recipe changes; `ensure` is otherwise a cheap no-op.

    vm_image.py ensure --cache-dir .lab/vm --authorized-key .lab/vm/ssh/id_ed25519.pub
    # prints {"directory": ..., "kernel": ..., "initrd": ..., "rootfs": ..., "built": ...}
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from lab_image import recipe_digest

# What a real etcd server needs, plus what the VM tier proves: Debian's cloud kernel (AppArmor
# and dm-crypt), cryptsetup, Clevis and systemd's cryptsetup (the LUKS key sources tang and keyfile
# open their volumes at boot), AppArmor's tools, nftables, SSH for Ansible, and etcd itself.
# Baked in because every apt run under software emulation costs minutes.
VM_PACKAGES: tuple[str, ...] = (
    "apparmor",
    "apparmor-utils",
    "ca-certificates",
    "clevis",
    "clevis-luks",
    "clevis-systemd",
    "cryptsetup-bin",
    "dbus",
    "e2fsprogs",
    "etcd-client",
    "etcd-server",
    "initramfs-tools",
    "iproute2",
    "kmod",
    "linux-image-cloud-amd64",
    "nftables",
    "openssh-server",
    "openssl",
    "procps",
    "python3",
    "python3-apt",
    "python3-cryptography",
    "systemd",
    "systemd-cryptsetup",
    "systemd-sysv",
    "udev",
)

# Run in the finished tree ($1) before it becomes a filesystem.
CUSTOMIZE_HOOKS: tuple[str, ...] = (
    # The root filesystem is the whole virtual disk.
    'echo "/dev/vda / ext4 rw,errors=remount-ro 0 1" > "$1/etc/fstab"',
    # The address comes from the kernel command line (ip=...), which systemd-network-generator
    # turns into a networkd configuration: one image serves every VM.
    'chroot "$1" systemctl enable systemd-networkd.service systemd-network-generator.service',
    # The package's etcd would start at boot with Debian's defaults; the play configures and starts it.
    'chroot "$1" systemctl disable etcd.service',
    'rm -rf "$1/var/lib/etcd/default"',
    # Debian's AppArmor ships profiles for programs this server never runs; compiling them costs
    # about 50 s of every boot under emulation. The abstractions and tunables stay for our profile.
    'find "$1/etc/apparmor.d" -maxdepth 1 -type f -delete',
    # Nothing waits for a network that is up as soon as networkd has run.
    'chroot "$1" systemctl mask systemd-networkd-wait-online.service',
)

SUPPORTED_SUITES: tuple[str, ...] = ("trixie",)
ROOTFS_SIZE = "3G"


@dataclass(frozen=True)
class VmRecipe:
    """Everything that decides the image's content; its hash names the image directory."""

    suite: str
    authorized_key: str
    packages: tuple[str, ...] = VM_PACKAGES
    hooks: tuple[str, ...] = CUSTOMIZE_HOOKS
    # Bump to force a rebuild when the build procedure itself changes.
    revision: int = 3

    def digest(self) -> str:
        return recipe_digest(self)

    def directory(self, cache_dir: Path) -> Path:
        return cache_dir / "images" / f"{self.suite}-{self.digest()}"

    def mmdebstrap_command(self, target: Path) -> list[str]:
        key_hook = (
            'mkdir -p -m 0700 "$1/root/.ssh" && '
            f"printf '%s\\n' '{self.authorized_key}' > \"$1/root/.ssh/authorized_keys\""
        )
        return [
            "mmdebstrap",
            "--variant=minbase",
            f"--include={','.join(self.packages)}",
            *(f"--customize-hook={hook}" for hook in (*self.hooks, key_hook)),
            self.suite,
            str(target),
        ]


def artifacts(directory: Path) -> dict[str, Path]:
    return {
        "kernel": directory / "vmlinuz",
        "initrd": directory / "initrd.img",
        "rootfs": directory / "rootfs.raw",
        # The image's SSH host key (every VM of the image has it): clients pin it in known_hosts.
        "host_key": directory / "ssh_host_ed25519_key.pub",
    }


def unmount_below(path: Path) -> None:
    """Lazily unmount everything mounted below path, deepest first.

    mmdebstrap bind-mounts /proc, /sys, /dev/pts and /dev/shm into the tree while it works; when it
    is killed they stay, and removing the tree would then recurse into the host's /dev/shm.
    """
    prefix = str(path.resolve()) + "/"
    mount_points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    for target in sorted((m for m in mount_points if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", target], check=False)


def build(recipe: VmRecipe, directory: Path) -> None:
    """Bootstrap into a tree, take the kernel and initramfs out, and pack the tree into ext4."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    # What a killed build left: its mounts first, then the files.
    for leftover in directory.parent.glob("etcd-vm-image-*"):
        unmount_below(leftover)
        shutil.rmtree(leftover, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="etcd-vm-image-", dir=directory.parent) as workdir:
        try:
            _build_in(recipe, directory, Path(workdir))
        finally:
            unmount_below(Path(workdir))  # before the directory is removed
    for stale in directory.parent.glob(f"{recipe.suite}-*"):
        if stale != directory:
            shutil.rmtree(stale, ignore_errors=True)


def _build_in(recipe: VmRecipe, directory: Path, workdir: Path) -> None:
    tree = workdir / "tree"
    staged = workdir / "out"
    staged.mkdir()
    subprocess.run(recipe.mmdebstrap_command(tree), check=True, stdout=sys.stderr)
    files = artifacts(staged)
    shutil.copy2(max((tree / "boot").glob("vmlinuz-*")), files["kernel"])
    shutil.copy2(max((tree / "boot").glob("initrd.img-*")), files["initrd"])
    shutil.copy2(tree / "etc/ssh/ssh_host_ed25519_key.pub", files["host_key"])
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(tree), str(files["rootfs"]), ROOTFS_SIZE],
        check=True,
        stdout=sys.stderr,
    )
    # Only a complete image gets the recipe's name: an interrupted build leaves nothing behind.
    staged.rename(directory)


def ensure(recipe: VmRecipe, cache_dir: Path) -> dict[str, object]:
    started = time.monotonic()
    directory = recipe.directory(cache_dir)
    built = not directory.is_dir()
    if built:
        build(recipe, directory)
    return {
        "directory": str(directory),
        **{name: str(path) for name, path in artifacts(directory).items()},
        "built": built,
        "seconds": round(time.monotonic() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("ensure", "ref"))
    parser.add_argument("--suite", default="trixie", choices=SUPPORTED_SUITES)
    parser.add_argument("--cache-dir", type=Path, required=True, help="where image directories are kept")
    parser.add_argument("--authorized-key", type=Path, required=True, help="public key root accepts")
    args = parser.parse_args(argv)
    recipe = VmRecipe(suite=args.suite, authorized_key=args.authorized_key.read_text().strip())
    if args.action == "ref":
        print(recipe.directory(args.cache_dir))
        return 0
    print(json.dumps(ensure(recipe, args.cache_dir.resolve())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
