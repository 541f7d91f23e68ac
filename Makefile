# reidflow: `make demo` runs the embedded default pipeline, `make test` runs the test suite.
# Both create the virtualenv on first use (idempotent: re-running installs nothing new).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.reidflow-installed
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q
export DVC_NO_ANALYTICS := 1
export PYTHONHASHSEED := 0

.PHONY: demo test test-unit bench lint venv clean-demo image test-image

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "reidflow needs Python 3.11")'
	$(PIP) install -c constraints.txt torch==2.13.0
	$(PIP) install -c constraints.txt -e '.[orchestrators,dev]'
	@touch $@

venv: $(STAMP)

demo: $(STAMP)
	VENV=$(VENV) bash scripts/demo.sh

test: $(STAMP)
	@.ci/system-deps >/dev/null 2>&1 || echo "note: could not install prometheus-pushgateway (needs root or sudo);" \
		"its integration test is skipped outside CI"
	$(BIN)/python -m pytest -q

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not integration"

bench: $(STAMP)
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b --quick || exit 1; done

LINT_PATHS := src tests bench components pipelines scripts/image-inputs-digest

lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

clean-demo:
	rm -rf artifacts data/synth

# ---- the CPU image, built with podman (no Docker engine, no registry: docker/README.md) ----
IMAGE        ?= localhost/reidflow:dev-cpu
IMAGE_BASE   ?= localhost/debian:bookworm-slim
DEBIAN_MIRROR ?= $(shell awk '/^URIs:/ {print $$2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || echo http://deb.debian.org/debian)
WHEELS       ?= $(or $(PIP_FIND_LINKS),/opt/wheels)

image:
	@command -v podman >/dev/null || { echo "make image needs podman: apt-get install -y --no-install-recommends podman debootstrap uidmap fuse-overlayfs slirp4netns"; exit 1; }
	@if ! podman image exists $(IMAGE_BASE); then \
		rootfs=$$(mktemp -d) && debootstrap --variant=minbase bookworm $$rootfs $(DEBIAN_MIRROR) \
		&& tar -C $$rootfs -c . | podman import - $(IMAGE_BASE); status=$$?; rm -rf $$rootfs; exit $$status; \
	fi
	podman build --isolation chroot --network host \
		-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/host-ca.crt:ro --build-arg PIP_CERT=/etc/ssl/host-ca.crt \
		-v $(WHEELS):/wheels:ro --build-arg TORCH_FIND_LINKS=/wheels \
		--build-arg BASE_IMAGE=$(IMAGE_BASE) --build-arg GIT_COMMIT=$$(git rev-parse HEAD) \
		--build-arg BUILD_DATE=$$(date -u +%FT%TZ) -f docker/Dockerfile -t $(IMAGE) .

# On success, rewrites docker/image-inputs.sha256 (the digest of the image's inputs: commit it); CI's
# .ci/image-test runs this target only when that stamp differs from the checkout.
test-image: image $(STAMP)
	REIDFLOW_TEST_IMAGE=$(IMAGE) $(BIN)/python -m pytest -q -p no:cacheprovider tests/unit/test_kfp_image.py
	$(BIN)/python scripts/image-inputs-digest --write
