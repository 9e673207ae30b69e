# The two commands: `make demo` and `make test`. Both create .venv and install the project when needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,viz]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/mmjax train --config configs/clip_tiny.py --workdir runs/demo
	$(BIN)/mmjax eval --model runs/demo --output runs/demo/eval.json --figure runs/demo/demo.png

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs *.egg-info
