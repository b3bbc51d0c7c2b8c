# Set-up is part of every target: a fresh clone needs nothing but Python 3.11+, Java 17+ and Maven.
PYTHON ?= python3
VENV := .venv
INSTALLED := $(VENV)/.installed

.PHONY: demo test lint clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet --editable '.[test]'
	touch $(INSTALLED)

demo: $(INSTALLED)  ## broker up, workers up, 50 prompts in, preferences out, summary
	$(VENV)/bin/karma demo

test: $(INSTALLED)  ## lint, then the whole suite (it starts its own Kafka broker)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest

lint: $(INSTALLED)
	$(VENV)/bin/ruff check .

clean:  ## removes the virtual environment and caches (Kafka jars, broker data)
	rm -rf $(VENV) .cache karma-out
