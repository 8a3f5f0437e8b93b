"""The containers.podman.podman connection, with Ansible's pipelining turned on."""

from __future__ import annotations

from ansible_collections.containers.podman.plugins.connection.podman import (
    Connection as PodmanConnection,
)

DOCUMENTATION = """
    name: podman_pipelined
    short_description: Run tasks in a podman container, modules piped to `podman exec --interactive`
    description:
      - The containers.podman.podman connection with one change, pipelining. A module is handed to
        the container's Python on stdin in one `podman exec`, instead of five per task (home
        directory, mkdir, chmod, the Python run, rm) and a copy.
      - The collection turns pipelining off because podman before 1.8 truncated stdin of
        `podman exec` (containers/podman#5046, containers/ansible-podman-collections#275). Podman 4
        passes it whole; tests/unit/test_podman_pipelined.py checks the exact bytes.
    author: etcd hardening toolkit
    options:
      remote_addr:
        description: The name or ID of the container.
        default: inventory_hostname
        vars:
          - name: ansible_host
          - name: inventory_hostname
          - name: ansible_podman_host
      remote_user:
        description: The user that runs commands in the container (podman exec --user).
        ini:
          - section: defaults
            key: remote_user
        env:
          - name: ANSIBLE_REMOTE_USER
        vars:
          - name: ansible_user
      podman_extra_args:
        description: Extra arguments for every podman command.
        default: ''
        vars:
          - name: ansible_podman_extra_args
        env:
          - name: ANSIBLE_PODMAN_EXTRA_ARGS
        ini:
          - section: defaults
            key: podman_extra_args
      pipelining:
        description:
          - Hand modules to the container's Python on stdin. On by default, the reason for this
            plugin; Ansible's C(pipelining) settings for SSH (C([ssh_connection])) do not reach
            other connections, so the lab ran five execs per task while ansible.cfg said pipelining.
        type: boolean
        default: true
        ini:
          - section: connection
            key: pipelining
        env:
          - name: ANSIBLE_PIPELINING
        vars:
          - name: ansible_pipelining
      podman_executable:
        description: The podman command.
        default: podman
        vars:
          - name: ansible_podman_executable
        env:
          - name: ANSIBLE_PODMAN_EXECUTABLE
"""


class Connection(PodmanConnection):  # type: ignore[misc]  # the collection is untyped
    """Like containers.podman.podman, but pipelines modules through `podman exec --interactive`."""

    transport = "podman_pipelined"
    has_pipelining = True

    def _podman(
        self,
        cmd: str | list[str],
        cmd_args: list[str] | None = None,
        in_data: bytes | None = None,
        use_container_id: bool = True,
    ) -> tuple[int, bytes, bytes]:
        # Without --interactive, podman exec does not connect the command's stdin at all.
        if in_data is not None and isinstance(cmd, list) and cmd[:1] == ["exec"]:
            cmd = ["exec", "--interactive", *cmd[1:]]
        result: tuple[int, bytes, bytes] = super()._podman(cmd, cmd_args, in_data, use_container_id)
        return result
