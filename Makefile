# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
# Both create .venv when it is missing: torch pinned first (2.13.0: the CPU build here,
# the CUDA build on a GPU box), then this package with its dev extra.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
TORCH  ?= torch==2.13.0
PROFILE ?= smoke
ARGS   ?=
# for `make wheelhouse` (offline GPU boxes): the target interpreter and platform
WHEEL_PY   ?= 3.11
WHEEL_PLAT ?= manylinux_2_28_x86_64

.PHONY: run test lab bench wheelhouse venv clean-runs

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m looper_utils.pipeline --profile $(PROFILE) $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(ARGS)

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

bench: $(STAMP)
	$(BIN)/python bench/scoring.py
	$(BIN)/python bench/pipeline_time.py

wheelhouse: $(STAMP)
	$(BIN)/python scripts/wheelhouse.py --dest wheelhouse --python $(WHEEL_PY) --platform $(WHEEL_PLAT) \
	  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform any --torch "$(TORCH)" $(ARGS)

clean-runs:
	rm -rf runs/
