# Two commands do everything on a fresh Debian 12 machine, as root:
#   make lab    install what is missing, build the node image, start the lab, harden it
#   make test   lint, unit tests, and every molecule scenario
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin

# Debian packages the lab, the tests and the image build need on the controller.
# netavark drives iptables to wire container networks, but does not depend on it.
APT_PACKAGES := podman runc netavark aardvark-dns iptables slirp4netns uidmap fuse-overlayfs \
	mmdebstrap nftables openssl python3-venv ca-certificates qemu-system-x86 qemu-utils openssh-client

# Every target runs with the project's tools first on PATH and with podman configured by the
# project's own file (the host's podman configuration is left alone).
export PATH := $(BIN):$(PATH)
export CONTAINERS_CONF := $(CURDIR)/lab/containers.conf
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
# The lab's own vault password (made on first use, in .lab/): the lab's controller-side keys (LUKS,
# Secrets encryption) are vault-encrypted as a real cluster's are.
export ANSIBLE_VAULT_PASSWORD_FILE := $(CURDIR)/scripts/lab_vault_password.py
ifdef CI
export NO_COLOR := 1
export ANSIBLE_NOCOLOR := 1
export PY_COLORS := 0
endif

# The scenarios `make molecule` runs side by side. They compete for CPU (each container task costs
# a podman exec and a Python start), so side by side saves only the waits; see docs/tests.md.
MOLECULE_SCENARIOS := default debian12 vm

.PHONY: help deps venv images checks lab lab-down lab-verify lint unit molecule test vm-then-debian12 checks-then-default test-vm bench drift audit scan clean

help:
	@echo "make lab       start the local lab (podman) and harden it with playbooks/site.yml"
	@echo "make lab-down  remove the lab's containers, network and CA"
	@echo "make lab-verify run the integration tests (the attacks) against the lab"
	@echo "make test      lint, unit tests and molecule scenarios ($(MOLECULE_SCENARIOS))"
	@echo "make test-vm   only the VM tier (qemu): AppArmor enforcement and LUKS on a real kernel"
	@echo "make drift     check mode on the lab: list what a run would change, non-zero on drift"
	@echo "make audit     judge every control on every lab host (CIS ids), non-zero on any failure"
	@echo "make scan      which Secrets in the lab's etcd are encrypted, and under which key"
	@echo "make bench     what hardening costs etcd, and the toolkit's run times at 3, 5, 7 members"

# Debian packages: installed only when one is missing, so re-runs are quick.
deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "Installing Debian packages:$$missing"; \
	  apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# The Python virtualenv, rebuilt when requirements.txt changes.
venv: $(VENV)/.installed
$(VENV)/.installed: requirements.txt | deps
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

lab: deps venv
	ansible-playbook -i inventory/lab playbooks/lab_up.yml
	ansible-playbook -i inventory/lab playbooks/site.yml

# The molecule scenarios' integration tests, against the lab. The last of them re-issue every
# certificate and switch the lab to TLS 1.3 only; `make lab` puts the inventory's profile back.
lab-verify: venv
	ETCD_TEST_INVENTORY=inventory/lab/hosts.yml pytest -m "not vm" tests/integration

lab-down: venv
	ansible-playbook -i inventory/lab playbooks/lab_down.yml

lint: venv
	yamllint --strict .
	ansible-lint
	ruff check scripts plugins tests roles
	ruff format --check scripts plugins tests roles
	mypy
	mypy tests/unit
	mypy tests/integration

unit: venv
	pytest tests/unit

# The containers' node images, built once before the scenarios start side by side (two builds of
# one image at once would collide).
images: deps venv
	python scripts/lab_image.py ensure --suite trixie
	python scripts/lab_image.py ensure --suite bookworm

# Every scenario at once, each line tagged with its scenario; any failure fails the target.
molecule: images
	$(MAKE) --no-print-directory -j$(words $(MOLECULE_SCENARIOS)) $(addprefix molecule-,$(MOLECULE_SCENARIOS))

molecule-%: images
	@started=$$(date +%s); \
	molecule test -s "$*" 2>&1 | sed -u 's/^/[$*] /'; \
	echo "[$*] scenario passed in $$(( $$(date +%s) - started )) s"

# Two lanes, each always busy: the VM tier then the debian12 scenario, and lint with the unit tests
# then the default scenario. The machine is CPU-bound and has two cores; the VM tier uses about
# 1.2 of them (its converge, sampled every 5 s, 2026-12-02), so beside lint and the unit tests
# alone, as before, most of a core stood idle for its last 25 minutes, and CI hit its 90-minute
# limit. The VM tier is paired with the lighter container scenario. Every scenario runs even when
# an earlier one failed, so one CI run reports every tier. A line of load average every minute
# shows in CI's log whether the machine was saturated (the sampler stops with make).
test: images
	@status=0; \
	(while sleep 60 && kill -0 $$$$ 2>/dev/null; do echo "[load] $$(date +%T) $$(cut -d' ' -f1-3 /proc/loadavg)"; done) & \
	trap "kill $$! 2>/dev/null" EXIT; \
	$(MAKE) --no-print-directory -j2 vm-then-debian12 checks-then-default || status=1; \
	exit $$status

# A lane's jobs one after another, each run even when an earlier one failed; fails if any failed.
run_each = @status=0; for job in $(1); do $(MAKE) --no-print-directory $$job || status=1; done; exit $$status

vm-then-debian12: images
	$(call run_each,molecule-vm molecule-debian12)

checks-then-default: images
	$(call run_each,checks molecule-default)

checks: lint unit

# The VM tier alone: one qemu VM as the etcd member, with the lab's containers as apiserver and
# attacker, for what containers cannot show (AppArmor enforcement, LUKS).
test-vm: images
	molecule test -s vm

# Drift in the lab: the site playbook in check mode with --diff; exit 1 on drift, 2 when the run
# fails. For a real inventory: .venv/bin/python scripts/drift.py -i inventory/<env> (see README).
drift: venv
	python scripts/drift.py -i inventory/lab

# The compliance audit of the lab: read-only evidence from every host (playbooks/audit.yml),
# judged by scripts/audit.py; also writes JUnit XML for CI. Exit 1 on any failed control.
audit: venv
	mkdir -p .lab/reports
	python scripts/audit.py -i inventory/lab --json .lab/reports/audit.json --junit .lab/reports/audit.xml

# Which Secrets in the lab's etcd are encrypted, under which key (scripts/secrets_scan.py, run on the
# apiserver host with its certificate and its EncryptionConfiguration); non-zero when any needs attention.
scan: venv
	ansible-playbook -i inventory/lab playbooks/secrets_scan.yml

# The three benchmark parts (scripts/bench.py: hardening, scale, membership): about an hour, on a
# machine to itself (its own containers, named bench-*, beside the lab's; not beside `make test`).
# One part alone: python scripts/bench.py --part membership. Tables in results/.
bench: deps venv
	python scripts/bench.py

# A VM image build that was killed can leave the host's /proc, /sys and /dev/shm mounted in .lab:
# unmount them first, so that removing .lab never reaches through them.
clean: lab-down
	{ findmnt -rn -o TARGET | grep '^$(CURDIR)/.lab/' || true; } | sort -r | xargs -r umount --lazy
	rm -rf $(VENV) .lab
