# vmscatter: the two set-up commands of the README are `make demo` and `make test`; both install what they need.
SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(PATH)
GO ?= go
BIN := bin/vmscatter
# The development and measurement binary (demo, bench): never installed on hosts. It runs $(BIN), found next to it.
LAB := bin/vmscatter-lab
# CI has 90 minutes for everything; the suite takes far less. The bound keeps a hung QEMU from eating it all.
TEST_TIMEOUT ?= 40m

.PHONY: all build deps libvirt-deps fixture qemu-versions test test-unit test-libvirt verify demo bench-quick bench bench-libvirt clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/vmscatter
	$(GO) build -o $(LAB) ./cmd/vmscatter-lab

# System packages (QEMU, busybox-static, iproute2, ...): idempotent, a no-op when present.
deps:
	@if [ "$$(id -u)" -ne 0 ]; then echo "make deps: run as root (it installs packages and the tests create network namespaces)"; exit 1; fi
	./scripts/install-deps.sh

# libvirt for the libvirt lab (bench/virtlab, docs/libvirt.md): idempotent; it never starts a system libvirtd.
libvirt-deps: deps
	@if [ "$$(id -u)" -ne 0 ]; then echo "make libvirt-deps: run as root (it installs packages)"; exit 1; fi
	./scripts/install-libvirt.sh

# The guest kernel and initramfs, built once into the cache.
fixture: deps
	$(GO) run ./bench/fixture/cmd/build-fixture

# Debian's QEMU 10.0 and 11.1 for the version matrix, unpacked into the cache (no system install); a no-op once
# fetched. A fetch that fails stops `make test` here rather than letting the version tests skip.
qemu-versions: deps
	./scripts/fetch-qemu.sh 10.0
	./scripts/fetch-qemu.sh 11.1

# The bench package's tests run real guests across namespaces under TCG, after the rest and alone: on two cores,
# sharing the CPU with the other packages' tests (the multicast engine's run for minutes) stretches every boot and
# migration of theirs.
# VMSCATTER_LIBVIRT_LAB=1 runs the libvirt lab's tests too (bench/virtlab, bench's TestLibvirt*): libvirt-deps
# installs libvirt for them.
test: deps libvirt-deps fixture qemu-versions verify
	VMSCATTER_LIBVIRT_LAB=1 $(GO) test -race -timeout $(TEST_TIMEOUT) $$($(GO) list ./... | grep -v '/bench$$')
	VMSCATTER_LIBVIRT_LAB=1 $(GO) test -race -timeout $(TEST_TIMEOUT) ./bench

test-unit:
	$(GO) test -race -short ./...

# The libvirt lab alone: one libvirtd per lab host, domains scattered through vmscatter (also part of `make test`).
test-libvirt: libvirt-deps fixture
	VMSCATTER_LIBVIRT_LAB=1 $(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./bench/virtlab
	VMSCATTER_LIBVIRT_LAB=1 $(GO) test -count=1 -timeout $(TEST_TIMEOUT) -run 'TestLibvirt' ./bench

verify:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	@cp go.mod /tmp/vmscatter.go.mod.bak; cp go.sum /tmp/vmscatter.go.sum.bak; \
	 $(GO) mod tidy; \
	 if ! diff -q go.mod /tmp/vmscatter.go.mod.bak >/dev/null || ! diff -q go.sum /tmp/vmscatter.go.sum.bak >/dev/null; then \
	   cp /tmp/vmscatter.go.mod.bak go.mod; cp /tmp/vmscatter.go.sum.bak go.sum; echo "go.mod/go.sum are not tidy: run go mod tidy"; exit 1; fi

demo: deps fixture build
	./$(LAB) demo --dir out/demo

bench-quick: deps fixture build
	./$(LAB) bench --quick --out out/bench-quick

bench: deps fixture build
	./$(LAB) bench --out out/bench

bench-libvirt: libvirt-deps fixture build
	./$(LAB) bench --libvirt --out out/bench-libvirt

clean:
	rm -rf bin out
