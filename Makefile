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

KERNEL ?= looper-math
PORT   ?= 8888

.PHONY: run test lab kernel bench wheelhouse venv clean-runs

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

# A named kernel ("Python (looper-math)") for this venv, for any Jupyter on the box (e.g. a Lambda
# instance's own JupyterLab): Kernel > Change Kernel > Python (looper-math).
kernel: $(STAMP)
	$(BIN)/python -m ipykernel install --user --name $(KERNEL) --display-name "Python ($(KERNEL))"

lab: kernel
	@echo "JupyterLab on port $(PORT) of this machine, kernel 'Python ($(KERNEL))'."
	@echo "From a laptop: ssh -N -L $(PORT):localhost:$(PORT) <user>@<this machine's address>"
	@echo "then open the http://localhost:$(PORT)/lab?token=... address printed below."
	$(BIN)/jupyter lab notebooks/ --no-browser --ip=127.0.0.1 --port=$(PORT) \
	  --MappingKernelManager.default_kernel_name=$(KERNEL)

bench: $(STAMP)
	$(BIN)/python bench/scoring.py
	$(BIN)/python bench/pipeline_time.py

wheelhouse: $(STAMP)
	$(BIN)/python scripts/wheelhouse.py --dest wheelhouse --python $(WHEEL_PY) --platform $(WHEEL_PLAT) \
	  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform any --torch "$(TORCH)" $(ARGS)

clean-runs:
	rm -rf runs/
