"""Bad input fails before any host is touched, with a message that says what to change.

The inventories point at containers that do not exist: had any play reached them, the run would
report them unreachable. Each case asserts the message and that only localhost ran anything.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, run_playbook

NEVER = {"ansible_connection": "containers.podman.podman"}


def topology(members: dict[str, Any] | None = None) -> dict[str, Any]:
    if members is None:
        members = {f"never-etcd-{i}": {"etcd_address": f"192.0.2.{i}"} for i in (1, 2, 3)}
    children: dict[str, Any] = {
        "etcd": {"hosts": members},
        "kube_control_plane": {"hosts": {"never-apiserver-1": {"etcd_address": "192.0.2.21"}}},
    }
    return {"vars": dict(NEVER), "children": children}


BASE_VARS: dict[str, Any] = {"etcd_cluster_name": "preflight", "etcd_pki_controller_dir": "/nonexistent"}

CASES: dict[str, tuple[dict[str, Any], dict[str, Any], str]] = {
    "even member count": (
        topology({f"never-etcd-{i}": {"etcd_address": f"192.0.2.{i}"} for i in (1, 2)}),
        {},
        r"The cluster has 2 members; use an odd number",
    ),
    "no members": (
        topology({}),
        {},
        r'Inventory group "etcd" \(etcd_pki_members_group\) is missing or empty',
    ),
    "duplicate addresses": (
        topology({f"never-etcd-{i}": {"etcd_address": "192.0.2.9"} for i in (1, 2, 3)}),
        {},
        r"Two members share an etcd_address \(192\.0\.2\.9\)",
    ),
    "member without an address": (
        topology(
            {
                "never-etcd-1": {"etcd_address": "192.0.2.1"},
                "never-etcd-2": {"etcd_address": "192.0.2.2"},
                "never-etcd-3": {"ansible_host": "node-without-ip.example"},
            }
        ),
        {},
        r"These members have no usable etcd_address .*: never-etcd-3\. Set etcd_address",
    ),
    "duplicate names ignoring case": (
        topology(
            {
                "never-etcd-1": {"etcd_address": "192.0.2.1"},
                "NEVER-ETCD-1": {"etcd_address": "192.0.2.2"},
                "never-etcd-3": {"etcd_address": "192.0.2.3"},
            }
        ),
        {},
        r"Member names must be unique ignoring case .*: never-etcd-1\.",
    ),
    "leaf lifetime beyond the CA's": (
        topology(),
        {"etcd_pki_leaf_lifetime_days": 4000, "etcd_pki_ca_lifetime_days": 3650},
        r"etcd_pki_leaf_lifetime_days \(4000\) must be shorter than etcd_pki_ca_lifetime_days \(3650\)",
    ),
    "a member FQDN that is a list of names": (
        topology(
            {
                "never-etcd-1": {
                    "etcd_address": "192.0.2.1",
                    "etcd_pki_member_fqdn": "etcd-1.example,IP:10.0.0.1",
                },
                "never-etcd-2": {"etcd_address": "192.0.2.2", "etcd_pki_member_fqdn": "etcd-2.example"},
                "never-etcd-3": {"etcd_address": "192.0.2.3"},
            }
        ),
        {},
        r"etcd_pki_member_fqdn is 'etcd-1\.example,IP:10\.0\.0\.1' on never-etcd-1: it must be a host name",
    ),
    "RSA key too small": (
        topology(),
        {"etcd_pki_key_type": "RSA", "etcd_pki_rsa_key_size": 2048},
        r"etcd_pki_rsa_key_size 2048 is too small: use 3072 or more",
    ),
    "unsupported key type": (
        topology(),
        {"etcd_pki_key_type": "DSA"},
        r"etcd_pki_key_type.*must be one of: ECC, RSA, got: DSA",
    ),
    "unknown TLS profile": (
        topology(),
        {"etcd_tls_profile": "legacy"},
        r"etcd_tls_profile.*must be one of: intermediate, modern, got: legacy",
    ),
    "apiserver known only by name": (
        {
            "vars": dict(NEVER),
            "children": {
                "etcd": topology()["children"]["etcd"],
                "kube_control_plane": {"hosts": {"never-apiserver-1": {"ansible_host": "api.example"}}},
            },
        },
        {},
        r"nftables needs addresses, not names, and these hosts have none: never-apiserver-1\.",
    ),
    "firewall source that is not an address": (
        topology(),
        {"etcd_firewall_client_extra_sources": ["192.0.2.50", "backup.example"]},
        r"etcd_firewall_client_extra_sources and etcd_firewall_metrics_sources take .*: backup\.example\.",
    ),
    "a quorum in RAM only": (
        topology(),
        {"etcd_storage_mode": "tmpfs"},
        r"3 of 3 members keep their data in RAM only .* That is a quorum, so one power loss of those"
        r" hosts loses the cluster's data\. Keep fewer than 2 members on tmpfs, or set"
        r" etcd_storage_allow_volatile_quorum: true",
    ),
    "unknown data-directory mode": (
        topology(),
        {"etcd_storage_mode": "nvme"},
        r"etcd_storage_mode.*must be one of: tmpfs, luks, disk, got: nvme",
    ),
    "unknown encryption provider": (
        topology(),
        {"kube_apiserver_etcd_encryption_providers": ["aescbc", "rot13"]},
        r"kube_apiserver_etcd_encryption_providers must list, once each .* It is \['aescbc', 'rot13'\]\.",
    ),
    "kms without its plugin's name": (
        topology(),
        {"kube_apiserver_etcd_encryption_providers": ["kms", "secretbox"]},
        r"The kms provider needs kube_apiserver_etcd_kms_name",
    ),
    "a member name with a comma": (
        topology(
            {
                f"never-etcd-{i}" if i != 2 else "never,etcd-2": {"etcd_address": f"192.0.2.{i}"}
                for i in (1, 2, 3)
            }
        ),
        {},
        r"the inventory host name is 'never,etcd-2' on never,etcd-2: it must be a host name of letters,"
        r" digits",
    ),
    "a member name with a systemd specifier": (
        topology(
            {
                f"never-etcd-{i}" if i != 2 else "never-etcd-%i": {"etcd_address": f"192.0.2.{i}"}
                for i in (1, 2, 3)
            }
        ),
        {},
        r"the inventory host name is 'never-etcd-%i' on never-etcd-%i: it must be a host name",
    ),
    "an address with a trailing newline": (
        topology(
            {
                f"never-etcd-{i}": {"etcd_address": f"192.0.2.{i}" + ("\n" if i == 3 else "")}
                for i in (1, 2, 3)
            }
        ),
        {},
        r"etcd_address is '192\.0\.2\.3\\n' on never-etcd-3: it must be one IPv4 or IPv6 address and"
        r" nothing else",
    ),
    "an IPv6 address with a zone": (
        topology(
            {
                f"never-etcd-{i}": {"etcd_address": f"fe80::{i}" + ("%eth0" if i == 1 else "")}
                for i in (1, 2, 3)
            }
        ),
        {},
        r"These members have no usable etcd_address .*: never-etcd-1\. Set etcd_address",
    ),
    "a data directory with a space": (
        topology(),
        {"etcd_data_dir": "/var/lib/etcd/my data"},
        r"etcd_data_dir is '/var/lib/etcd/my data' on never-etcd-1, never-etcd-2, never-etcd-3: it must be an"
        r" absolute path",
    ),
    "every IPv4 address as a client source": (
        topology(),
        {"etcd_firewall_client_extra_sources": ["0.0.0.0/0"]},
        r"etcd_firewall_client_extra_sources is '0\.0\.0\.0/0' on never-etcd-1, never-etcd-2,"
        r" never-etcd-3: it must be an IPv4 or IPv6 address or CIDR and nothing else, narrower than"
        r" the whole address space",
    ),
    "every IPv6 address as a metrics source": (
        topology(),
        {"etcd_firewall_metrics_sources": ["::/0"]},
        r"etcd_firewall_metrics_sources is '::/0' on never-etcd-1, never-etcd-2, never-etcd-3: it must be",
    ),
    "a quote in the firewall's log prefix": (
        topology(),
        {"etcd_firewall_log_prefix": 'etcd" accept comment "'},
        r"etcd_firewall_log_prefix is 'etcd\" accept comment \"' on never-etcd-1, never-etcd-2,"
        r" never-etcd-3: it must be at most 127 letters, digits, spaces",
    ),
    "a log rate nft does not know": (
        topology(),
        {"etcd_firewall_log_rate": "10/minute accept"},
        r"etcd_firewall_log_rate is '10/minute accept' on never-etcd-1, never-etcd-2, never-etcd-3: it"
        r" must be an nftables rate",
    ),
    "missing apiserver group": (
        {"vars": dict(NEVER), "children": {"etcd": topology()["children"]["etcd"]}},
        {},
        r'Inventory group "kube_control_plane" \(etcd_pki_clients_group\) is missing',
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_fails_before_any_host_is_touched(
    case: str, write_inventory: Callable[[dict[str, Any], dict[str, Any]], Path]
) -> None:
    hosts, extra_vars, expected = CASES[case]
    inventory = write_inventory(copy.deepcopy(hosts), {**BASE_VARS, **extra_vars})
    result = run_playbook(REPO / "playbooks/site.yml", inventory)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert re.search(expected, " ".join(output.split())), output
    recap = output[output.rindex("PLAY RECAP") :]
    touched = [line.split()[0] for line in recap.splitlines()[1:] if ":" in line and "ok=" in line]
    assert touched == ["localhost"], f"hosts reached before the error: {touched}\n{output}"
