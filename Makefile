# Spiral: chaos and fault-injection suites for a Go data plane in front of
# memcached and a CQL store. See README.md.
#
#   make test    the project's tests (quick mode), what CI runs
#   make chaos   every suite at full strength, with a report in reports/
#   make soak    the soak suite for SOAK_DURATION (default 2h)
#   make envelope PKG=./suites/x [MODE=quick COUNT=5]  peaks of runs vs budgets
#   make ablation [ROWS=a,b MODE=quick]  fixed arms with one defence turned back each
#   ENGINE=private (with test, chaos or soak): against a brand-new Docker
#                engine started for the run and removed after it (root)

SHELL := /bin/bash
GO ?= go
# Package test binaries run one at a time: each starts its own backends and
# the suites measure process-wide figures (threads, sockets) that a
# neighbouring binary would disturb.
GOTEST_FLAGS ?= -p 1 -count=1
REPORT_DIR ?= reports/$(shell date -u +%Y%m%dT%H%M%SZ)
GOTESTSUM := $(GO) run gotest.tools/gotestsum@v1.13.0
SOAK_DURATION ?= 2h

export TESTCONTAINERS_HOST_OVERRIDE ?= 127.0.0.1
export TESTCONTAINERS_RYUK_DISABLED ?= true

.PHONY: all setup images test chaos ablation soak lint clean help envelope

all: test

help:
	@sed -n '4,9p' Makefile | sed 's/^# *//'

# ENGINE=private runs test, chaos or soak against a private engine
# (scripts/private-engine.sh); empty uses the engine that answers (DOCKER_HOST
# or the default socket), started by `make setup` where none does.
ENGINE ?=
ifneq ($(filter-out private,$(ENGINE)),)
$(error ENGINE=$(ENGINE): want ENGINE=private, or leave it empty for the engine that answers)
endif

ifeq ($(ENGINE),private)
test chaos ablation soak:
	@scripts/private-engine.sh $(MAKE) --no-print-directory $@ ENGINE=
else

## setup: make sure a Docker engine answers (installs and starts one on Debian as root).
setup:
	@scripts/setup-engine.sh

## images: build the offline images when the official ones can't be pulled (rebuilt only when inputs change).
images: setup
	@scripts/images.sh

## test: vet, then every package's tests in quick mode (scripts/test.sh); JUNIT=path also writes JUnit XML there.
test: images
	@JUNIT='$(JUNIT)' GOTESTSUM='$(GOTESTSUM)' scripts/test.sh

## chaos: the suites at full strength, then the ablation (ABLATION=0 skips it); JUnit XML, JSON and HTML report in $(REPORT_DIR).
chaos: images
	@scripts/chaos.sh "$(REPORT_DIR)" full

## ablation: every suite's fixed arm with one defence turned back per row (ROWS=a,b: some), in MODE (default quick); the table in $(REPORT_DIR)/ablation.html.
ablation: images
	@SPIRAL_MODE='$(or $(MODE),quick)' $(GO) run ./cmd/spiral ablation $(if $(ROWS),-rows '$(ROWS)') "$(REPORT_DIR)"

## soak: the soak suite (suites/soak) for $(SOAK_DURATION).
soak: images
	@SPIRAL_SOAK_DURATION=$(SOAK_DURATION) scripts/chaos.sh "$(REPORT_DIR)" soak ./suites/soak

## envelope: PKG's tests (RUN=regex: some) COUNT times in MODE, each run's reports apart, then spiral envelope (scripts/envelope.sh).
envelope: images
	@scripts/envelope.sh '$(or $(MODE),quick)' '$(or $(COUNT),5)' '$(or $(PKG),$(error envelope: PKG=package wanted, e.g. PKG=./suites/batchflood))' '$(or $(RUN),.)'
endif

## lint: gofmt, go vet, golangci-lint (thelper, testifylint, errorlint; see .golangci.yml), actionlint on .github/workflows (and shellcheck on their run: blocks, if installed).
lint:
	@test -z "$$(gofmt -l .)" || { gofmt -l .; echo "gofmt: files above need formatting"; exit 1; }
	$(GO) vet ./...
	$(GO) run github.com/golangci/golangci-lint/v2/cmd/golangci-lint@v2.15.0 run ./...
	$(GO) run github.com/rhysd/actionlint/cmd/actionlint@v1.7.12 .github/workflows/*.yml

## clean: remove containers and reports Spiral left behind.
clean:
	-@ids=$$(docker ps -aq --filter label=dev.spiral.fixture 2>/dev/null); [ -z "$$ids" ] || docker rm -f $$ids >/dev/null
	rm -rf reports
