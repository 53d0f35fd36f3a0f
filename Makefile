# Two commands: `make reproduce` (the main job: the cpu profile without a GPU, full with one) and `make test`
# (the whole suite).
# Each creates or reuses the virtual environment .venv by itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.nslib-installed
PROFILE ?= auto

.PHONY: setup reproduce test test-fast lab clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, on its own: pip takes a local build where the machine provides one.
	$(BIN)/pip install --quiet "torch>=2.2,<3" "torchvision>=0.17"
	$(BIN)/pip install --quiet -e ".[test,autoattack]"
	# torchattacks is a test-only reference; --no-deps because its pin of requests conflicts with jupyterlab.
	$(BIN)/pip install --quiet --no-deps "torchattacks>=3.5"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

setup: $(STAMP)

# PROFILE=auto: "full" where CUDA is present, "cpu" elsewhere; it says which, and how long it expects, first.
# --resume: a second `make reproduce` skips what is done (and trained models are always reused).
reproduce: setup
	$(BIN)/python -m nslib reproduce --profile $(PROFILE) --resume

# The tests write to outputs/test, so they never overwrite what `make reproduce` wrote; the notebooks run
# verbose, one line per cell, so the terminal says which notebook it is on. tests/test_jupyterlab.py runs
# notebook 00 in JupyterLab in headless Chromium: where Chromium is missing and we are root with apt-get,
# Debian's package is installed first; an install that fails never fails the target (the test then skips
# and says why).
test: setup
	@{ command -v chromium || command -v chromium-browser || command -v google-chrome; } >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    echo "installing chromium (apt-get) for the JupyterLab test" && \
	    { { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 || \
	      echo "could not install chromium: the JupyterLab test will skip"; }; } || true
	NSLIB_OUTPUTS=$(CURDIR)/outputs/test $(BIN)/python -m pytest -q -p no:cacheprovider tests
	NSLIB_OUTPUTS=$(CURDIR)/outputs/test $(BIN)/python -m pytest -v -p no:cacheprovider --nbval-lax notebooks

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" tests

# Rooted at the repository, so outputs/ (report, figures) opens beside notebooks/; --allow-root: the
# machines this kit runs on are often containers where the user is root.
lab: setup
	$(BIN)/jupyter lab --allow-root --ServerApp.root_dir="$(CURDIR)" --LabApp.default_url=/lab/tree/notebooks

clean:
	rm -rf outputs
