"""The apiserver side: its etcd flags, Secrets encrypted at rest, and the scanner that proves it.

No kube-apiserver runs in the lab: its control-plane host carries the static pod kubeadm would
have written (roles/lab_control_plane), which kube_apiserver_etcd edits. The scanner reads the
lab's real etcd over mTLS, with Secrets written the way the apiserver writes them
(tests/kube_envelope.py: an encryption of its own, not the scanner's).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from testinfra.host import Host

from conftest import APISERVER_CREDS, REPO, Topology, ansible_env, run_playbook, run_site, unvault
from kube_envelope import encrypt, secret_object

# The play's own logic, the same on every platform: the default scenario runs it.
pytestmark = pytest.mark.platform_independent

HostOf = Callable[[str], Host]
Probe = Callable[..., dict[str, Any]]
Scanner = Callable[..., subprocess.CompletedProcess[str]]
CONFIG = "/etc/kubernetes/encryption/encryption-config.yaml"
MANIFEST = "/etc/kubernetes/manifests/kube-apiserver.yaml"
TOOLS = "/usr/local/lib/etcd-toolkit"
ETCD_FLAGS = ("etcd-servers", "etcd-cafile", "etcd-certfile", "etcd-keyfile")


def endpoint(topology: Topology) -> str:
    return f"https://{topology.addresses[topology.members[0]]}:2379"


def put_raw(topology: Topology, probe: Probe, etcd_key: str, value: bytes) -> None:
    """Bytes into etcd as they are (a Secret as the apiserver stores it), with the apiserver's certificate."""
    encoded = base64.b64encode(value).decode()
    args = (
        "kv",
        "put",
        etcd_key,
        encoded,
        "--value-base64",
        "--endpoint",
        endpoint(topology),
        *APISERVER_CREDS,
    )
    done = probe(topology.apiservers[0], *args)
    assert done["served"], done


def delete_prefix(topology: Topology, probe: Probe, prefix: str) -> None:
    args = ("kv", "delete-prefix", prefix, "--endpoint", endpoint(topology), *APISERVER_CREDS)
    assert probe(topology.apiservers[0], *args)["served"]


def key_file(topology: Topology) -> Path:
    return REPO / ".lab/encryption" / str(topology.cluster_vars["etcd_cluster_name"]) / "keys.yml.vault"


def host_config(host: Host) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(host.file(CONFIG).content_string)
    return config


def flags(manifest_text: str) -> dict[str, list[str]]:
    command = yaml.safe_load(manifest_text)["spec"]["containers"][0]["command"]
    found: dict[str, list[str]] = {}
    for argument in command[1:]:
        name, _, value = argument[2:].partition("=")
        found.setdefault(name, []).append(value)
    return found


def test_the_encryption_config_is_root_only_and_holds_the_controllers_key(
    topology: Topology, host_of: HostOf
) -> None:
    for apiserver in topology.apiservers:
        host = host_of(apiserver)
        config, directory = host.file(CONFIG), host.file(str(Path(CONFIG).parent))
        assert (config.mode, config.user, config.group) == (0o600, "root", "root")
        assert (directory.mode, directory.user) == (0o700, "root")
        # The attack: any other user on the host reads the keys.
        stolen = host.run(f"runuser -u nobody -- cat {CONFIG}")
        assert stolen.rc != 0 and "Permission denied" in stolen.stderr, stolen.stderr
        (entry,) = host_config(host)["resources"]
        assert entry["resources"] == ["secrets"]
        # secretbox writes; identity, last, only reads what predates encryption.
        assert [next(iter(p)) for p in entry["providers"]] == ["secretbox", "identity"]
        on_host = entry["providers"][0]["secretbox"]["keys"]
        on_controller = yaml.safe_load(unvault(key_file(topology)))["secretbox"]
        assert on_host == on_controller and len(base64.b64decode(on_host[0]["secret"])) == 32
    assert key_file(topology).stat().st_mode & 0o077 == 0, "the controller's key file is readable by others"


def test_the_manifest_points_the_apiserver_at_the_members_with_its_client_certificate(
    topology: Topology, host_of: HostOf
) -> None:
    servers = ",".join(f"https://{topology.addresses[m]}:2379" for m in topology.members)
    for apiserver in topology.apiservers:
        host = host_of(apiserver)
        manifest = host.file(MANIFEST)
        assert (manifest.mode, manifest.user) == (0o600, "root")
        now = flags(manifest.content_string)
        assert {name: now[name] for name in (*ETCD_FLAGS, "encryption-provider-config")} == {
            "etcd-servers": [servers],
            "etcd-cafile": ["/etc/kubernetes/pki/etcd/ca.crt"],
            "etcd-certfile": ["/etc/kubernetes/pki/apiserver-etcd-client.crt"],
            "etcd-keyfile": ["/etc/kubernetes/pki/apiserver-etcd-client.key"],
            "encryption-provider-config": [CONFIG],
        }
        # The lab's manifest names 1.31: the config is re-read without a restart.
        assert now["encryption-provider-config-automatic-reload"] == ["true"]
        # The certificate files it names are there, the key root-only.
        assert host.file(now["etcd-keyfile"][0]).mode == 0o600
        assert host.file(now["etcd-certfile"][0]).exists and host.file(now["etcd-cafile"][0]).exists
        pod = yaml.safe_load(manifest.content_string)
        mounts = pod["spec"]["containers"][0]["volumeMounts"]
        assert {
            "mountPath": "/etc/kubernetes/encryption",
            "name": "etcd-encryption-config",
            "readOnly": True,
        } in (mounts)
        # kubeadm's own manifest was kept outside the kubelet's directory, and every other flag is as it was.
        (backup,) = host.check_output("ls /etc/kubernetes/backup").split()
        before = flags(host.file(f"/etc/kubernetes/backup/{backup}").content_string)
        assert before["etcd-servers"] == ["https://127.0.0.1:2379"], "not kubeadm's original"
        ours = {*ETCD_FLAGS, "encryption-provider-config", "encryption-provider-config-automatic-reload"}
        assert {k: v for k, v in now.items() if k not in ours} == {
            k: v for k, v in before.items() if k not in ours
        }
        assert host.check_output("ls -A /etc/kubernetes/manifests") == "kube-apiserver.yaml"


def run_encryption_part(topology: Topology, *args: str) -> subprocess.CompletedProcess[str]:
    return run_site(topology, "--tags", "encryption", "--limit", ",".join(topology.apiservers), *args)


def test_a_rerun_changes_nothing_and_shows_no_key(topology: Topology, host_of: HostOf) -> None:
    result = run_encryption_part(topology, "--diff", "-v")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    for apiserver in topology.apiservers:
        assert (
            f"{apiserver}" in output and "changed=0" in output.split(f"\n{apiserver}", 1)[-1].split("\n")[0]
        )
    secret = host_config(host_of(topology.apiservers[0]))["resources"][0]["providers"][0]["secretbox"][
        "keys"
    ][0]
    assert secret["secret"] not in output


def test_without_the_controllers_key_file_the_run_stops_and_changes_nothing(
    topology: Topology, host_of: HostOf
) -> None:
    """Fail closed: new keys over a working config would make every Secret unreadable."""
    keys = key_file(topology)
    before = {a: host_of(a).file(CONFIG).sha256sum for a in topology.apiservers}
    away = keys.with_name(keys.name + ".away")
    shutil.move(keys, away)
    try:
        result = run_encryption_part(topology)
        assert result.returncode != 0, result.stdout[-3000:]
        assert "already encrypt" in result.stdout and "Restore the key file" in result.stdout, result.stdout[
            -3000:
        ]
        assert not keys.exists(), "a new key file was made"
        assert {a: host_of(a).file(CONFIG).sha256sum for a in topology.apiservers} == before
    finally:
        shutil.move(away, keys)


# --- fail closed: the controller's keys against the keys the apiservers really use ----------------

OTHER_CONFIG = "/etc/kubernetes/encryption-old/config.yaml"


def another_key() -> dict[str, str]:
    return {"name": "secretbox-20250101T000000Z", "secret": base64.b64encode(os.urandom(32)).decode()}


def vault(plain: bytes) -> bytes:
    """Encrypted with the lab's vault password, as the play writes the controller's key file."""
    from ansible.parsing.vault import VaultLib, VaultSecret

    password = subprocess.run(
        [str(REPO / "scripts/lab_vault_password.py")], check=True, capture_output=True, text=True
    ).stdout.strip()
    encrypted: bytes = VaultLib([("default", VaultSecret(password.encode()))]).encrypt(plain)
    return encrypted


def apiserver_files(topology: Topology, host_of: HostOf) -> dict[str, str]:
    """Checksums of every file the role could change on the apiservers, and of the key file."""
    sums = {"controller key file": key_file(topology).read_bytes().hex()}
    for apiserver in topology.apiservers:
        host = host_of(apiserver)
        for path in (CONFIG, MANIFEST, OTHER_CONFIG):
            sums[f"{apiserver}:{path}"] = host.file(path).sha256sum if host.file(path).exists else "absent"
    return sums


def refused(result: subprocess.CompletedProcess[str], *phrases: str) -> str:
    text = " ".join(result.stdout.split())
    assert result.returncode != 0, text[-3000:]
    missing = [p for p in phrases if p not in text]
    assert not missing, f"{missing} not in: {text[-3000:]}"
    return text


def write_manifest(apiserver: str, text: str) -> None:
    command = ["podman", "exec", "-i", apiserver, "sh", "-c", f"cat > {MANIFEST}"]
    subprocess.run(command, input=text, text=True, check=True)


@pytest.fixture
def lab_files_restored(topology: Topology, host_of: HostOf) -> Iterator[dict[str, str]]:
    """What the test may change (manifest, key file), put back afterwards; the checksums before."""
    keys = key_file(topology).read_bytes()
    manifests = {a: host_of(a).file(MANIFEST).content_string for a in topology.apiservers}
    before = apiserver_files(topology, host_of)
    yield before
    key_file(topology).write_bytes(keys)
    key_file(topology).chmod(0o600)
    for apiserver, text in manifests.items():
        host_of(apiserver).run_expect([0], f"rm -rf {Path(OTHER_CONFIG).parent}")
        write_manifest(apiserver, text)


def test_a_live_config_at_another_path_with_other_keys_stops_the_run(
    topology: Topology, host_of: HostOf, lab_files_restored: dict[str, str]
) -> None:
    """(a) The apiserver's flag names another EncryptionConfiguration: its keys are the ones compared."""
    apiserver = topology.apiservers[0]
    host = host_of(apiserver)
    providers = [{"secretbox": {"keys": [another_key()]}}, {"identity": {}}]
    other = {
        "kind": "EncryptionConfiguration",
        "apiVersion": "apiserver.config.k8s.io/v1",
        "resources": [{"resources": ["secrets"], "providers": providers}],
    }
    host.run_expect([0], f"mkdir -p -m 0700 {Path(OTHER_CONFIG).parent}")
    subprocess.run(["podman", "exec", "-i", apiserver, "sh", "-c", f"umask 077 && cat > {OTHER_CONFIG}"],
                   input=yaml.safe_dump(other), text=True, check=True)  # fmt: skip
    host.run_expect(
        [0],
        f"sed -i 's|--encryption-provider-config=.*|--encryption-provider-config={OTHER_CONFIG}|' {MANIFEST}",
    )
    before = apiserver_files(topology, host_of)

    result = run_encryption_part(topology)

    refused(
        result, f"{apiserver} uses secretbox keys secretbox-20250101T000000Z (sha256", "Nothing was changed"
    )
    assert apiserver_files(topology, host_of) == before


def test_a_run_on_part_of_the_apiservers_without_the_key_file_stops_and_makes_no_key(
    topology: Topology, host_of: HostOf, lab_files_restored: dict[str, str], tmp_path: Path
) -> None:
    """(b) The key file is missing and the run does not reach every apiserver (--limit)."""
    absent = topology.untrusted[0]
    extra = tmp_path / "second-apiserver.yml"
    extra.write_text(f"all:\n  children:\n    kube_control_plane:\n      hosts:\n        {absent}: {{}}\n")
    key_file(topology).unlink()

    result = run_encryption_part(topology, "-i", str(extra))

    refused(result, f"{absent} (group kube_control_plane) are not in this run", "Nothing was changed")
    assert not key_file(topology).exists(), "a new key file was made"
    for apiserver in topology.apiservers:
        for path in (CONFIG, MANIFEST):
            assert host_of(apiserver).file(path).sha256sum == lab_files_restored[f"{apiserver}:{path}"]


def test_a_key_file_that_does_not_hold_the_hosts_keys_stops_the_run(
    topology: Topology, host_of: HostOf, lab_files_restored: dict[str, str]
) -> None:
    """(c) An old backup, or another cluster's key file at the same path."""
    key_file(topology).write_bytes(vault(yaml.safe_dump({"secretbox": [another_key()]}).encode()))
    before = apiserver_files(topology, host_of)

    result = run_encryption_part(topology)

    text = refused(
        result,
        "and the controller's key file holds secretbox-20250101T000000Z (sha256",
        "Nothing was changed",
    )
    assert "two clusters share one key file path" in text
    assert apiserver_files(topology, host_of) == before


def test_the_audit_judges_the_encrypting_provider_and_keeps_no_key(
    topology: Topology, host_of: HostOf, tmp_path: Path
) -> None:
    """CIS 1.2.31 from the host's EncryptionConfiguration, of which only provider names leave the host."""
    evidence = tmp_path / "evidence"
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts/audit.py"), "-i", str(topology.inventory), "--limit",
         ",".join(topology.apiservers), "--save-evidence", str(evidence), "--json", "-"],
        capture_output=True, text=True, check=False, env=ansible_env(),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    checks = {(c["host"], c["cis"]): c for c in json.loads(done.stdout)["checks"]}
    secret = host_config(host_of(topology.apiservers[0]))["resources"][0]["providers"][0]["secretbox"][
        "keys"
    ][0]
    for apiserver in topology.apiservers:
        assert checks[(apiserver, "1.2.31")]["status"] == "pass"
        assert checks[(apiserver, "1.2.31")]["detail"] == "secretbox > identity"
        saved = (evidence / f"{apiserver}.json").read_text()
        assert json.loads(saved)["apiserver"]["encryption"] == [
            {"resources": ["secrets"], "providers": ["secretbox", "identity"]}
        ]
    for saved_file in evidence.iterdir():
        assert secret["secret"] not in saved_file.read_text(), saved_file
    assert secret["secret"] not in done.stdout + done.stderr


@pytest.mark.parametrize("api_version", ["v1beta4", "v1beta3"])
def test_for_a_cluster_not_yet_created_a_kubeadm_configuration_says_the_same(
    topology: Topology, host_of: HostOf, api_version: str
) -> None:
    host, path = host_of(topology.apiservers[0]), f"/root/kubeadm-etcd-{api_version}.yaml"
    manifest_before = host.file(MANIFEST).sha256sum
    settings = {
        "kube_apiserver_etcd_apiserver_config": "kubeadm_config",
        "kube_apiserver_etcd_kubeadm_config": path,
        "kube_apiserver_etcd_kubeadm_api_version": api_version,
    }
    result = run_encryption_part(topology, "-e", json.dumps(settings))
    assert result.returncode == 0, result.stdout[-5000:]
    written = host.file(path)
    assert (written.mode, written.user) == (0o600, "root")
    config = yaml.safe_load(written.content_string)
    assert (config["apiVersion"], config["kind"]) == (f"kubeadm.k8s.io/{api_version}", "ClusterConfiguration")
    assert config["etcd"]["external"] == {
        "endpoints": [f"https://{topology.addresses[m]}:2379" for m in topology.members],
        "caFile": "/etc/kubernetes/pki/etcd/ca.crt",
        "certFile": "/etc/kubernetes/pki/apiserver-etcd-client.crt",
        "keyFile": "/etc/kubernetes/pki/apiserver-etcd-client.key",
    }
    extra = config["apiServer"]["extraArgs"]
    # v1beta4 lists name/value pairs (a flag may repeat); v1beta3 has a map.
    args = {a["name"]: a["value"] for a in extra} if api_version == "v1beta4" else extra
    assert args["encryption-provider-config"] == CONFIG
    assert config["apiServer"]["extraVolumes"] == [{
        "name": "etcd-encryption-config", "hostPath": "/etc/kubernetes/encryption",
        "mountPath": "/etc/kubernetes/encryption", "readOnly": True, "pathType": "DirectoryOrCreate",
    }]  # fmt: skip
    assert host.file(MANIFEST).sha256sum == manifest_before, "the static pod was touched"
    host.check_output(f"rm {path}")


def test_a_kms_v2_plugin_can_encrypt_with_secretbox_kept_for_reading(
    topology: Topology, host_of: HostOf
) -> None:
    """Moving to a KMS: kms first (v2, its socket and timeout), the secretbox key kept to read."""
    host = host_of(topology.apiservers[0])
    settings = {
        "kube_apiserver_etcd_encryption_providers": ["kms", "secretbox"],
        "kube_apiserver_etcd_kms_name": "vault-kms",
        "kube_apiserver_etcd_kms_endpoint": "unix:///var/run/kmsplugin/socket.sock",
    }
    secretbox_before = host_config(host)["resources"][0]["providers"][0]
    try:
        result = run_encryption_part(topology, "-e", json.dumps(settings))
        assert result.returncode == 0, result.stdout[-5000:]
        providers = host_config(host)["resources"][0]["providers"]
        assert providers == [
            {"kms": {"apiVersion": "v2", "name": "vault-kms", "endpoint": "unix:///var/run/kmsplugin/socket.sock",
                     "timeout": "3s"}},
            secretbox_before,
            {"identity": {}},
        ]  # fmt: skip
    finally:
        restored = run_encryption_part(topology)
        assert restored.returncode == 0, restored.stdout[-5000:]
    assert host_config(host)["resources"][0]["providers"][0] == secretbox_before


# --- key rotation, in its four phases --------------------------------------------------------


def names_on(host: Host) -> list[str]:
    providers = host_config(host)["resources"][0]["providers"]
    return [key["name"] for key in providers[0]["secretbox"]["keys"]]


def controller_keys(topology: Topology) -> list[dict[str, str]]:
    keys: list[dict[str, str]] = yaml.safe_load(unvault(key_file(topology)))["secretbox"]
    return keys


def rotate(topology: Topology, *args: str) -> subprocess.CompletedProcess[str]:
    return run_playbook(topology, REPO / "playbooks/rotate_encryption_key.yml", *args)


def put_sealed(topology: Topology, probe: Probe, etcd_key: str, key: dict[str, str]) -> None:
    """A Secret as the apiserver writes it with this secretbox key."""
    value = encrypt("secretbox", key["name"], base64.b64decode(key["secret"]), secret_object("s"), etcd_key)
    put_raw(topology, probe, etcd_key, value)


def test_a_key_rotation_goes_through_its_four_phases_and_resumes(
    topology: Topology, host_of: HostOf, probe: Probe
) -> None:
    hosts = [host_of(a) for a in topology.apiservers]
    (old,) = controller_keys(topology)
    assert all(names_on(h) == [old["name"]] for h in hosts)

    # Phase 1 (stopped there on purpose): every host can read with the new key, the old one writes.
    result = rotate(topology, "-e", "kube_apiserver_etcd_rotation_stop_after=add")
    assert result.returncode == 0, result.stdout[-5000:]
    assert "Stopped before phase promote" in result.stdout
    first, new = controller_keys(topology)
    assert first == old and new["name"] > old["name"] and new["secret"] != old["secret"]
    assert all(names_on(h) == [old["name"], new["name"]] for h in hosts)

    # Phase 2: the new key writes everywhere, the old one still reads.
    result = rotate(topology, "-e", "kube_apiserver_etcd_rotation_stop_after=promote")
    assert result.returncode == 0, result.stdout[-5000:]
    assert [k["name"] for k in controller_keys(topology)] == [new["name"], old["name"]]
    assert all(names_on(h) == [new["name"], old["name"]] for h in hosts)

    # Phase 3: a Secret still under the old key (and no kubectl here): the run stops with the command
    # to run, and keeps the old key.
    etcd_key = f"/registry/secrets/rotation-{uuid.uuid4().hex[:8]}/s"
    put_sealed(topology, probe, etcd_key, old)
    result = rotate(topology)
    assert result.returncode != 0
    assert f"1 value(s) in etcd are still encrypted with {old['name']}" in result.stdout, result.stdout[
        -5000:
    ]
    assert ("kubectl --kubeconfig /etc/kubernetes/admin.conf get secrets --all-namespaces -o json | kubectl "
            "--kubeconfig /etc/kubernetes/admin.conf replace -f -") in result.stdout  # fmt: skip
    assert all(names_on(h) == [new["name"], old["name"]] for h in hosts)

    # What that command does: the apiserver writes the Secret again, with the new key.
    put_sealed(topology, probe, etcd_key, new)
    the_old_key_stays_unless_a_complete_scan_shows_nothing_under_it(topology, host_of, probe, old, new)

    # Then phase 4.
    result = rotate(topology)
    assert result.returncode == 0, result.stdout[-5000:]
    assert "Rotation done" in result.stdout
    assert controller_keys(topology) == [new]
    assert all(names_on(h) == [new["name"]] for h in hosts)
    delete_prefix(topology, probe, etcd_key.rsplit("/", 1)[0] + "/")


def the_old_key_stays_unless_a_complete_scan_shows_nothing_under_it(
    topology: Topology, host_of: HostOf, probe: Probe, old: dict[str, str], new: dict[str, str]
) -> None:
    """Phase 3's gate reads every key under the apiservers' --etcd-prefix: (a) a custom resource
    sealed with the old key (its path holds its group: /registry/<group>/<plural>/), (b) a value under
    a custom --etcd-prefix, (c) a prefix that holds nothing (no evidence) each keep the old key."""
    keeps_the_old_key = f"1 value(s) in etcd are still encrypted with {old['name']}"
    run = uuid.uuid4().hex[:8]
    widget = f"/registry/example.com/widgets/rotation-{run}/w"
    put_sealed(topology, probe, widget, old)
    refused(rotate(topology), keeps_the_old_key)
    delete_prefix(topology, probe, widget.rsplit("/", 1)[0] + "/")

    custom = f"/custom-{run}"
    apiserver = topology.apiservers[0]
    manifest = host_of(apiserver).file(MANIFEST).content_string
    edited = manifest.replace(
        "    - --etcd-servers=", f"    - --etcd-prefix={custom}/\n    - --etcd-servers=", 1
    )
    assert edited != manifest
    try:
        write_manifest(apiserver, edited)
        put_sealed(topology, probe, f"{custom}/secrets/rotation/s", old)
        refused(rotate(topology), keeps_the_old_key)
        delete_prefix(topology, probe, f"{custom}/")
        refused(rotate(topology), f"etcd holds no key under {custom}/", "so the old key stays")
    finally:
        write_manifest(apiserver, manifest)
        delete_prefix(topology, probe, f"{custom}/")
    assert [k["name"] for k in controller_keys(topology)] == [new["name"], old["name"]]


# --- the Secrets-at-rest scanner against the lab's etcd -----------------------------------------


@pytest.fixture(scope="module")
def scanner_on(topology: Topology) -> Scanner:
    """The scanner (with the probe it imports) on the apiserver hosts."""
    for host in topology.apiservers:
        subprocess.run(["podman", "exec", host, "mkdir", "-p", TOOLS], check=True)
        for script in ("secrets_scan.py", "etcd_probe.py"):
            subprocess.run(
                ["podman", "cp", str(REPO / "scripts" / script), f"{host}:{TOOLS}/{script}"], check=True
            )

    def run(host: str, *args: str, config: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
        command = ["python3", f"{TOOLS}/secrets_scan.py", "--endpoint", endpoint(topology), *args]
        return subprocess.run(
            ["podman", "exec", "-i", host, *command],
            input=json.dumps(config) if config else "", capture_output=True, text=True, check=False,
        )  # fmt: skip

    return run


SCAN_KEYS = {"aescbc": os.urandom(32), "aesgcm": os.urandom(32)}


@pytest.fixture(scope="module")
def written(topology: Topology, host_of: HostOf, probe: Probe) -> Iterator[tuple[str, dict[str, Any]]]:
    """Secrets in etcd as the apiserver would store them, each kind under its own namespace.

    Returns the run's id and the host's EncryptionConfiguration with two older providers behind
    its own (aescbc and aesgcm, keys made here): a config in the middle of a provider change.
    """
    run_id = uuid.uuid4().hex[:8]
    config = host_config(host_of(topology.apiservers[0]))
    providers = config["resources"][0]["providers"]
    current = providers[0]["secretbox"]["keys"][0]
    for kind, secret in SCAN_KEYS.items():
        providers.insert(
            -1, {kind: {"keys": [{"name": f"old-{kind}", "secret": base64.b64encode(secret).decode()}]}}
        )

    def put(namespace: str, name: str, value: bytes) -> None:
        put_raw(topology, probe, f"/registry/secrets/{namespace}-{run_id}/{name}", value)

    def sealed(provider: str, key_name: str, secret: bytes, namespace: str, name: str) -> None:
        etcd_key = f"/registry/secrets/{namespace}-{run_id}/{name}"
        put(namespace, name, encrypt(provider, key_name, secret, secret_object(name), etcd_key))

    for name in ("db-password", "tls-key", "token"):
        sealed("secretbox", current["name"], base64.b64decode(current["secret"]), "clean", name)
    for kind, secret in SCAN_KEYS.items():
        sealed(kind, f"old-{kind}", secret, "migrating", f"under-{kind}")
    put("dirty", "plain-protobuf", secret_object("plain-protobuf"))
    put("dirty", "plain-json", b'{"kind":"Secret","apiVersion":"v1","data":{"k":"aHVudGVyMg=="}}')
    sealed("aescbc", "retired", os.urandom(32), "dirty", "retired")
    sealed("secretbox", current["name"], os.urandom(32), "dirty", "forged")
    put("dirty", "kms", b"k8s:enc:kms:v2:vault:\x0a\x20" + os.urandom(32))
    yield run_id, config
    # Gone again: a value under a key name the cluster uses would hold up a later rotation.
    for namespace in ("clean", "migrating", "dirty"):
        delete_prefix(topology, probe, f"/registry/secrets/{namespace}-{run_id}/")


def scan_namespace(
    topology: Topology, scanner_on: Scanner, written: tuple[str, dict[str, Any]], namespace: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    """Scan one namespace's Secrets from the apiserver host, with its credentials and the config."""
    run_id, config = written
    prefix = f"/registry/secrets/{namespace}-{run_id}/"
    args = (*APISERVER_CREDS, "--prefix", prefix, "--encryption-config", "-", "--decrypt", *extra)
    return scanner_on(topology.apiservers[0], *args, config=config)


def scan_report(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode in (0, 1), result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def findings_by_name(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(Secret name, problem) of every finding, sorted."""
    return sorted((f["key"].rsplit("/", 1)[1], f["problem"]) for f in report["findings"])


def test_the_scanner_proves_secrets_under_the_current_key(
    topology: Topology, scanner_on: Scanner,
    written: tuple[str, dict[str, Any]],
) -> None:  # fmt: skip
    _, config = written
    result = scan_namespace(topology, scanner_on, written, "clean", "--json")
    report = scan_report(result)
    assert result.returncode == 0 and report["clean"], report
    current = config["resources"][0]["providers"][0]["secretbox"]["keys"][0]["name"]
    assert [(c["state"], c["provider"], c["key"], c["count"]) for c in report["counts"]] == [
        ("encrypted", "secretbox", current, 3)
    ]
    assert report["decrypted"] == {"proved": 3, "not_proved": 0}
    table = scan_namespace(topology, scanner_on, written, "clean")
    assert table.returncode == 0 and "all 3 values are encrypted under the current key" in table.stdout
    assert current in table.stdout and config["resources"][0]["providers"][0]["secretbox"]["keys"][0][
        "secret"] not in table.stdout  # fmt: skip


def test_the_scanner_opens_aescbc_and_aesgcm_and_flags_them_as_stale(
    topology: Topology, scanner_on: Scanner,
    written: tuple[str, dict[str, Any]],
) -> None:  # fmt: skip
    result = scan_namespace(topology, scanner_on, written, "migrating", "--json")
    report = scan_report(result)
    assert result.returncode == 1, report
    # Both open with their keys (aesgcm bound to its etcd key), but the config writes with secretbox.
    assert report["decrypted"] == {"proved": 2, "not_proved": 0}
    assert findings_by_name(report) == [("under-aescbc", "stale"), ("under-aesgcm", "stale")]


def test_the_scanner_finds_plaintext_stale_and_forged_values(
    topology: Topology, scanner_on: Scanner,
    written: tuple[str, dict[str, Any]],
) -> None:  # fmt: skip
    result = scan_namespace(topology, scanner_on, written, "dirty", "--json")
    report = scan_report(result)
    assert result.returncode == 1, report
    assert findings_by_name(report) == [
        ("forged", "does-not-open"), ("kms", "stale"), ("plain-json", "plaintext"),
        ("plain-protobuf", "plaintext"), ("retired", "does-not-open"), ("retired", "stale"),
    ]  # fmt: skip
    assert report["decrypted"]["not_proved"] == 1  # kms: no plugin here, not a failure in itself


def test_the_scan_playbook_runs_the_scanner_with_the_hosts_own_configuration(
    topology: Topology, host_of: HostOf, written: tuple[str, dict[str, Any]]
) -> None:
    """`make scan`: on the apiserver host, its config on the scanner's stdin (no PyYAML there)."""
    run_id, _ = written
    secret = host_config(host_of(topology.apiservers[0]))["resources"][0]["providers"][0]["secretbox"][
        "keys"
    ][0]

    def scan_playbook(namespace: str) -> subprocess.CompletedProcess[str]:
        prefixes = {"kube_apiserver_etcd_scan_prefixes": [f"/registry/secrets/{namespace}-{run_id}/"]}
        return run_playbook(topology, REPO / "playbooks/secrets_scan.yml", "-e", json.dumps(prefixes))

    clean = scan_playbook("clean")
    assert clean.returncode == 0, clean.stdout[-3000:]
    assert "all 3 values are encrypted under the current key" in clean.stdout
    dirty = scan_playbook("dirty")
    assert dirty.returncode != 0 and "Values in etcd need attention" in dirty.stdout, dirty.stdout[-3000:]
    assert "plaintext: /registry/secrets/dirty-" in dirty.stdout
    assert secret["secret"] not in clean.stdout + dirty.stdout


def test_a_certificate_from_another_ca_reads_no_secret(
    topology: Topology, scanner_on: Scanner,
    foreign_client_cert: tuple[str, ...], written: tuple[str, dict[str, Any]],
) -> None:  # fmt: skip
    """On the apiserver host (the one the firewall lets in), with a client certificate of the
    Kubernetes CA: etcd refuses the handshake and the scanner reads nothing (CIS 2.7)."""
    result = scanner_on(topology.apiservers[0], "--cacert", APISERVER_CREDS[1], *foreign_client_cert)
    assert result.returncode == 2 and not result.stdout, result.stdout
    assert "alert" in result.stderr.lower(), result.stderr
