# The two commands: `make demo` and `make test`. Both create .venv and install the project when needed;
# `make demo` installs what mmjax runs on, `make test` adds the reference libraries the tests compare against.
PYTHON ?= python3
# Test processes (pytest-xdist). Two halve nothing on two cores, but compiles and subprocess start-ups overlap:
# 548 s -> 416 s on 2026-11-28 (199 tests). 788 tests took 1866 s on two cores on 2026-12-02 (2678 s before
# tests/conftest.py compiled at -O0).
TEST_WORKERS ?= 2
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[viz]"
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test,viz]"
	touch $@ $(VENV)/.installed-run

install: $(VENV)/.installed-run

demo: $(VENV)/.installed-run
	$(BIN)/mmjax train --config configs/clip_tiny.py --workdir runs/demo
	$(BIN)/mmjax eval --model runs/demo --output runs/demo/eval.json --figure runs/demo/demo.png

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -n $(TEST_WORKERS)

clean:
	rm -rf $(VENV) runs *.egg-info
