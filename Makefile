# `make demo` and `make test` bootstrap .venv on a fresh machine (uv when present,
# python3 -m venv + pip otherwise), then run. `make bench` adds the benchmark baselines.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
EXTRAS ?= dev,airflow,kfp,vault,aws,postgres,server
comma  := ,
STAMP   = $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: venv test demo bench clean

$(VENV)/.installed-%: pyproject.toml
	@set -e; \
	if command -v uv >/dev/null 2>&1; then \
	  [ -x $(PY) ] || uv venv --python $(PYTHON) $(VENV); \
	  uv pip install --python $(PY) -e ".[$(EXTRAS)]"; \
	else \
	  [ -x $(PY) ] || $(PYTHON) -m venv $(VENV); \
	  $(PY) -m pip install --quiet --disable-pip-version-check -e ".[$(EXTRAS)]"; \
	fi
	@touch $@

venv: $(STAMP)

test: venv
	$(PY) -m pytest

demo: venv
	VENV=$(VENV) bash scripts/demo.sh

bench:
	$(MAKE) venv EXTRAS=dev,airflow,kfp,vault,aws,postgres,server,bench
	$(PY) benchmarks/bench_redact.py --markdown docs/benchmarks.md
	$(PY) benchmarks/bench_lease.py --markdown docs/benchmarks.md
	$(PY) benchmarks/bench_airflow_backend.py --markdown docs/benchmarks.md
	$(PY) benchmarks/bench_aws.py --markdown docs/benchmarks.md
	$(PY) benchmarks/bench_airflow_api_server.py --markdown docs/benchmarks.md
	$(PY) benchmarks/bench_scan.py --markdown docs/benchmarks.md
	$(PY) benchmarks/bench_rotation.py --markdown docs/benchmarks.md
	$(PY) benchmarks/bench_vault.py --markdown docs/benchmarks.md
	$(PY) benchmarks/bench_server.py --markdown docs/benchmarks.md

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
