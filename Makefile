# cni-reconciler: `sudo make run` and `sudo make test` are the whole set-up.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# Debian packages needed at run time and by the tests (the reference plugins are the test oracle;
# the full Debian kernel, qemu and busybox-static boot the virtme-ng VM for kernel-feature tests).
APT_PACKAGES := iproute2 iptables nftables libnftables1 conntrack containernetworking-plugins \
	dnsmasq-base graphviz procps kmod psmisc systemd strace e2fsprogs \
	linux-image-amd64 qemu-system-x86 busybox-static gcc libc6-dev
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: setup apt venv run test test-host test-vm lint bench clean-state

setup: apt venv

apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip >/dev/null
	$(PY) -m pip install -q -e '.[test]'
	@rm -f $(VENV)/.installed-* && touch $@

run: setup
	$(VENV)/bin/reconciler apply --specs specs --state state; rc=$$?; \
	$(VENV)/bin/reconciler status --specs specs --state state; exit $$rc

VM_PYTEST_ARGS ?=

# The VM job has its own kernel (no namespace, link or firewall state is shared with the host suite),
# so it boots in the background while the host suite runs; its output follows the host suite's.
test: setup lint
	@vmlog=$$(mktemp /tmp/rcn-vm-job.XXXXXX); \
	setsid env VM_QUIET=1 tests/vm/run.sh $(VM_PYTEST_ARGS) >"$$vmlog" 2>&1 & vm=$$!; \
	trap 'kill -- -$$vm 2>/dev/null; rm -f "$$vmlog"' EXIT; \
	$(PY) -m pytest $(PYTEST_ARGS); host=$$?; \
	echo "--- host suite: exit $$host; waiting for the VM job (started with it)"; \
	wait $$vm; vmrc=$$?; cat "$$vmlog"; \
	echo "--- host suite: exit $$host; VM job: exit $$vmrc"; \
	[ $$host -eq 0 ] && [ $$vmrc -eq 0 ]

lint:
	$(VENV)/bin/ruff check reconciler tests bench
	$(VENV)/bin/lint-imports

test-host:
	$(PY) -m pytest $(PYTEST_ARGS)

# ipvlan, vlan, dummy and vrf tests, for real, in Debian's full kernel under virtme-ng.
test-vm: setup
	tests/vm/run.sh $(VM_PYTEST_ARGS)

bench: setup
	$(PY) bench/run.py

clean-state:
	rm -rf state/results state/networks state/reconciler
