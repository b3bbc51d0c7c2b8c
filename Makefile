# Set-up is part of every target: a fresh clone needs nothing but Python 3.11+, Java 17+ and Maven.
PYTHON ?= python3
VENV := .venv
INSTALLED := $(VENV)/.installed
# The suite also trains and runs small real models (karma lab): torch and transformers, ~5.6 GB.
INSTALLED_LAB := $(VENV)/.installed-lab

.PHONY: demo demo-openai demo-lab test smoke-transformers smoke-dpo lint clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet --editable '.[test]'
	touch $(INSTALLED)

$(INSTALLED_LAB): $(INSTALLED)
	$(VENV)/bin/pip install --quiet --editable '.[test,lab,train]'
	touch $(INSTALLED_LAB)

demo: $(INSTALLED)  ## broker up, workers up, 50 prompts in, preferences out, summary
	$(VENV)/bin/karma demo

demo-openai: $(INSTALLED)  ## the demo with every model and the judge behind an OpenAI-compatible server (simulated)
	@mkdir -p karma-out
	$(VENV)/bin/karma simulated-server --port 8000 > karma-out/simulated-server.log 2>&1 & \
	  server=$$!; trap "kill $$server" EXIT; \
	  for i in $$(seq 100); do curl -sf http://127.0.0.1:8000/health > /dev/null && break; sleep 0.2; done; \
	  $(VENV)/bin/karma demo --config examples/pool-openai.yaml

LAB := karma-out/lab
demo-lab: $(INSTALLED_LAB)  ## the demo on real models: the lab (trained here on the CPU once, then cached), its profiles measured by karma profile, the verifier as judge
	$(VENV)/bin/karma lab build --out $(LAB)
	$(VENV)/bin/karma profile --config $(LAB)/pool.yaml --out $(LAB)/measured.csv $(LAB)/prompts/heldout.jsonl
	KARMA_JUDGE__BACKEND=verifier KARMA_KIN__PROFILES=$(LAB)/measured.csv KARMA_POLICY=kin \
	  $(VENV)/bin/karma demo --config $(LAB)/pool.yaml --prompts $(LAB)/prompts/heldout.jsonl --out $(LAB)/preferences.jsonl

# The suite also needs openssl and Prometheus: scripts/ensure-test-tools.sh installs them when missing
# (apt-get as root, else Prometheus's Debian package unpacked under .cache/tools) or says what to install.
test: $(INSTALLED_LAB)  ## lint, the import contracts (.importlinter), then the whole suite (it starts its own Kafka broker)
	scripts/ensure-test-tools.sh
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache
	PATH="$(CURDIR)/.cache/tools/usr/bin:$$PATH" $(VENV)/bin/pytest

smoke-transformers:  ## the transformers backend on a tiny random Llama, CPU (a separate venv: torch is ~5.6 GB)
	test -x .venv-torch/bin/python || $(PYTHON) -m venv .venv-torch
	.venv-torch/bin/pip install --quiet --editable '.[transformers]'
	.venv-torch/bin/python deploy/gpu/transformers_smoke.py

# SHARD=path/shard-000000.parquet runs it on one of your `karma export` shards instead.
smoke-dpo:  ## a `karma export` shard through TRL's DPOTrainer on a tiny random Llama, CPU (.venv-torch, plus trl)
	test -x .venv-torch/bin/python || $(PYTHON) -m venv .venv-torch
	.venv-torch/bin/pip install --quiet --editable '.[transformers,export]' 'trl>=1.0'
	if [ -n "$(SHARD)" ]; then .venv-torch/bin/python deploy/gpu/dpo_smoke.py --shard "$(SHARD)"; else \
	  .venv-torch/bin/python deploy/gpu/dpo_smoke.py --format parquet && \
	  .venv-torch/bin/python deploy/gpu/dpo_smoke.py --format jsonl --messages; fi

lint: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache

clean:  ## removes the virtual environment and caches (Kafka jars, broker data)
	rm -rf $(VENV) .venv-torch .cache karma-out
