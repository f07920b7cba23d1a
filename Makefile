# The two commands: `make train` and `make test`. Each creates .venv when missing and installs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch first, pinned: on a machine without a GPU the pinned version resolves to a CPU wheel where one is
# provided (fast, small); on a machine with CUDA, PyPI's Linux wheel of the same version is the CUDA
# build. Override to choose, e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128".
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev
TRAIN_ARGS ?= --configs cartpole small --run.steps 3000 --logdir runs/cartpole

.PHONY: install train test lint bench clean
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

train: install
	OMP_WAIT_POLICY=PASSIVE $(PY) train.py $(TRAIN_ARGS)

test: install
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q

lint: install
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

bench: install
	$(PY) bench/update.py

clean:
	rm -rf $(VENV) runs
