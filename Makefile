# ztpd — every install step lives here, so a fresh Debian 12 machine (as root) needs only `make`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Debian packages: runtime tools, the real protocol peers the tests talk to, and the VM stack.
APT_PACKAGES := python3 python3-venv iproute2 curl ca-certificates \
	dnsmasq-base kea-dhcp4-server kea-admin udhcpc isc-dhcp-client tcpdump \
	tftp-hpa atftp ipxe ovmf qemu-system-x86 busybox-static systemd chromium \
	qemu-utils ipxe-qemu lldpd openipmi \
	debootstrap grub-efi-amd64-bin grub-pc-bin fdisk dosfstools mtools zstd debconf

.PHONY: all deps apt venv lint typecheck unit test e2e e2e-preseed demo check clean bench-dhcp images discovery-image os-image

all: test

# apt-get is skipped when every package is already installed (keeps `make` idempotent and offline-safe).
apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		created=0; \
		if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; created=1; fi; \
		DEBIAN_FRONTEND=noninteractive apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; rc=$$?; \
		if [ $$created = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi; \
		exit $$rc; \
	fi

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

deps: apt venv

lint: venv
	$(BIN)/ruff check ztpd tests bench
	$(BIN)/ruff format --check ztpd tests bench

typecheck: venv
	$(BIN)/mypy

# The whole suite, the lab's end-to-end test (marker e2e, about 10 minutes) included; the image
# deploy VM tests (marker deploy) are left to `make e2e` (docs/install.md). The slowest 25 tests'
# times are printed at the end.
test: deps lint typecheck images os-image
	$(BIN)/pytest -p no:cacheprovider --durations=25 -m "not deploy" tests

# Only the end-to-end tests: the lab's (QEMU VMs from power-on to deployed and a disk boot) and
# the image-deploy VM tests through a bare ztpd serve (root; images from `make images os-image`);
# timings in test-artifacts/e2e-timings.json.
e2e: deps images os-image
	$(BIN)/pytest -p no:cacheprovider -m "e2e or deploy" tests

# iPXE loaders from Debian's ipxe package into images/ (re-runs offline from images/cache/).
images: venv discovery-image
	$(BIN)/python -c 'from pathlib import Path; from ztpd.images import fetch, installers; print(fetch(Path("images")).to_dict()); print({r: m.to_dict() for r, m in installers.fetch(Path("images")).items()})'

# The discovery kernel + initrd into images/discovery/ (re-runs offline from images/cache/discovery/).
# FIRMWARE=1 adds the non-free NIC firmware the drivers name (images/README.md).
discovery-image: venv
	$(BIN)/python -c 'from pathlib import Path; from ztpd.images import discovery; m = discovery.build(Path("images"), firmware=bool("$(FIRMWARE)")).to_dict(); print(m["files"])'

# A small bootable Debian 12 disk image into images/os/debian-12/ (root; minutes; cached).
os-image: venv
	$(BIN)/python -c 'from pathlib import Path; from ztpd.images import osimage; print(osimage.build(Path("images"), "debian-12").to_dict())'

check: venv
	$(BIN)/ztpd check

# A real Debian network install in a lab VM through ztpd's preseed method (root; not in CI; tens
# of minutes under TCG). The VM reaches deb.debian.org through a proxy the script runs (listening
# in the lab, connecting from the host): the mirror must be reachable from this host.
e2e-preseed: deps images
	$(BIN)/python -m tests.install.e2e_preseed

# The lab: 3 VMs on a virtual LAN in network namespaces (root), page on 127.0.0.1:8480.
# Ctrl-C stops following; `.venv/bin/ztpd lab down` removes everything the lab made.
demo: deps images os-image
	@echo "ztpd demo: status page on http://127.0.0.1:8480/ once the lab is up; state in state/lab"
	$(BIN)/ztpd lab up --nodes 3

# perfdhcp against ztpd, Kea and dnsmasq in namespaces (root); results go in bench/RESULTS.md.
bench-dhcp: deps
	$(BIN)/python bench/dhcp_bench.py

clean:
	rm -rf $(VENV) state .mypy_cache .ruff_cache .pytest_cache
