# Entry points for people and CI. The lock file is the only source of package versions; `stack` runs Kafka,
# PostgreSQL and Redis locally without Docker (see deploy/README.md).
SHELL := /bin/bash
.DEFAULT_GOAL := test

VENV := .venv
PY := $(VENV)/bin/python
TIDEMARK := $(VENV)/bin/tidemark
# Overridable, e.g. STACK="$(PY) -m tidemark.stack" when the full CLI does not import.
STACK := $(TIDEMARK) stack
UV_VERSION := 0.13.9
# Modules that must stay free of Kafka/database imports and pass `mypy --strict`; extend as they appear.
PURE_MODULES := schemas/ streams/correlation/rolling.py streams/correlation/clock.py streams/correlation/processor.py \
  streams/correlation/alerts.py streams/host.py streams/checkpoints.py \
  core/costs.py core/deadletter.py core/consumed.py core/events.py core/supervision.py core/metrics.py connectors/synthetic/market.py streams/patterns/nulls.py connectors/replay.py \
  core/sessions.py connectors/polygon/symbols.py connectors/polygon/normalise.py connectors/polygon/trade_ids.py \
  streams/rotation/ranks.py streams/rotation/strength.py streams/rotation/sectors.py \
  streams/rotation/processor.py projections/adjust.py \
  streams/patterns/stats.py streams/patterns/scan.py streams/patterns/grid.py streams/patterns/processor.py \
  streams/strategies/ streams/discovery/ streams/lifecycle/machine.py streams/lifecycle/paper.py streams/lifecycle/performance.py streams/portfolio/optimiser.py streams/portfolio/book.py streams/portfolio/frontier.py connectors/synthetic/daily.py \
  streams/execution/rebalance.py streams/execution/positions.py streams/execution/desk.py connectors/broker.py \
  connectors/simulated/broker.py connectors/alpaca/client.py connectors/reconciliation.py \
  streams/risk/measures.py streams/risk/backtest.py streams/risk/history.py streams/risk/limits.py streams/risk/monitor.py \
  streams/audit/
# Re-sync only when the lock or the project metadata changed: a sync reinstalls the editable project.
INSTALLED := $(VENV)/.installed

.PHONY: preflight install stack test demo bench lint down

# Java, Maven, PostgreSQL and Redis checked with the system Python before anything is installed or started.
preflight:
	@python3 tidemark/preflight.py

install: $(INSTALLED)

$(INSTALLED): requirements.lock pyproject.toml
	@if [ ! -x $(PY) ]; then \
	  python3 -m venv $(VENV) || { \
	    [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null || { echo "python3 -m venv failed: install python3-venv" >&2; exit 1; }; \
	    rm -rf $(VENV); \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv && python3 -m venv $(VENV); }; \
	fi
	$(VENV)/bin/pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	$(VENV)/bin/uv pip sync -q --python $(PY) requirements.lock
	$(VENV)/bin/uv pip install -q --python $(PY) --no-deps -e .
	@touch $@

stack: preflight install
	$(STACK) up

test: stack
	@rc=0; $(VENV)/bin/pytest -q || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: treated as a failure" >&2; exit 1; fi; \
	exit $$rc

demo: stack
	$(TIDEMARK) demo

bench: stack
	$(PY) -m bench

lint: install
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy $(PURE_MODULES)

# Falls back to the stack module itself so a broken CLI never leaves services running (CI's trap).
down:
	@if [ -x $(PY) ]; then $(STACK) down || $(PY) -m tidemark.stack down; fi
