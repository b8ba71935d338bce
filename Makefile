# bnncube: `make demo` runs the main job on the built-in default, `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.bnncube-installed
DEMO   ?= build/demo
APT_PACKAGES := gcc-arm-none-eabi libnewlib-arm-none-eabi binutils-arm-none-eabi qemu-system-arm
export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 3

.PHONY: setup system-packages test test-fast fuzz demo bench lint format clean

setup: $(STAMP) system-packages

# The Python environment: the pinned stack of DESIGN.md section 2, resolved through constraints.txt.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
	touch $(STAMP)

# The ARM toolchain and QEMU (for the emulated Cortex-M7): installed when missing and we are root,
# otherwise the exact command is printed. Tests that need them skip with a reason when absent.
system-packages:
	@missing=""; \
	for p in $(APT_PACKAGES); do \
	  if command -v dpkg >/dev/null 2>&1; then dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; \
	  else case $$p in gcc-arm-none-eabi) command -v arm-none-eabi-gcc >/dev/null || missing="$$missing $$p";; \
	       qemu-system-arm) command -v qemu-system-arm >/dev/null || missing="$$missing $$p";; esac; fi; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	else \
	  echo "missing system packages:$$missing"; \
	  echo "install them with: sudo apt-get update && sudo apt-get install -y$$missing"; \
	fi

# TEST_JOBS pytest worker processes (pytest-xdist; 0 runs in this process). Each worker builds
# the session fixtures (zoo models, Cortex-M7 ELFs) it needs once.
TEST_JOBS ?= 2
test: setup
	$(BIN)/pytest -q -n $(TEST_JOBS)

test-fast: setup
	$(BIN)/pytest -q -n $(TEST_JOBS) -m "not slow"

# Fuzzing of every front end (docs/fuzzing.md): FUZZ_CASES mutated files per front end through
# the CLI; a table, build/fuzz/summary.json and build/fuzz/findings/; exit 1 on any finding.
FUZZ_CASES ?= 10000
FUZZ_JOBS  ?= 2
fuzz: setup
	$(BIN)/python -m bnncube.validation.fuzz --cases $(FUZZ_CASES) --jobs $(FUZZ_JOBS) --out build/fuzz

# The face pipeline on synthetic identities (docs/demo.md): train, quantize, convert, generate,
# validate on the host and the emulated Cortex-M7, compare; about 10 minutes on 2 cores.
demo: setup
	$(BIN)/bnncube demo -o $(DEMO)

bench: setup
	$(BIN)/python bench/zoo_footprint.py --out bench/results
	$(BIN)/python bench/kernels.py --out bench/results
	$(BIN)/python bench/summary.py --out bench/results

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf build st_ai_output st_ai_ws bench/results .pytest_cache
