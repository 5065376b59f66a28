# The two commands a new user needs: `make demo` and `make test`. Both install first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0

.PHONY: install demo finetune-demo test test-fast coverage typecheck bench schema docs docs-serve clean

install: $(STAMP)

# Idempotent: re-runs only when pyproject.toml changes. The CPU build of torch is taken
# where no CUDA GPU is present (a plain `torch` requirement would pull a multi-GB CUDA build);
# deepspeed ships as source only and is installed after torch without prebuilt ops.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		$(BIN)/pip install --quiet "torch==$(TORCH_VERSION)"; \
	else \
		$(BIN)/pip install --quiet "torch==$(TORCH_VERSION)" || \
		$(BIN)/pip install --quiet "torch==$(TORCH_VERSION)" --index-url https://download.pytorch.org/whl/cpu; \
	fi
	DS_BUILD_OPS=0 $(BIN)/pip install --quiet --no-build-isolation "deepspeed>=0.14"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: install
	$(BIN)/tabula run specs/quickstart.yaml --headless

# Fine-tuning end to end on a CPU in a few minutes: a small base model (finetune-chat.yaml trained briefly
# from scratch: no model ships and nothing downloads), exported as a transformers checkpoint, imported
# (build/base.yaml shows what `tabula import` writes), then LoRA on the shipped chat file (specs/finetune-lora.yaml),
# exported merged (build/lora-merged) and as a peft adapter (build/lora-peft).
BASE_TOKENS ?= 128k
finetune-demo: install
	rm -rf build/demo-base build/base build/base.yaml build/demo-lora build/lora-merged build/lora-peft
	$(BIN)/tabula run specs/finetune-chat.yaml --headless --run-dir build/demo-base train.budget.tokens=$(BASE_TOKENS) train.eval=null track.aim.enabled=false
	$(BIN)/tabula export build/demo-base --format hf --out build/base
	$(BIN)/tabula import build/base --out build/base.yaml
	$(BIN)/tabula run specs/finetune-lora.yaml --headless --run-dir build/demo-lora $(LORA_OVERRIDES)
	$(BIN)/tabula export build/demo-lora --format hf --out build/lora-merged
	$(BIN)/tabula export build/demo-lora --format peft --out build/lora-peft

# The whole suite, then line coverage per layer (tests/coverage_by_layer.py; `make coverage` for HTML).
# The exit status is pytest's. Two pytest-xdist workers (TEST_WORKERS), a test file to one worker (its
# module fixtures, a DeepSpeed launch or a trained run, are made once); tests/conftest.py gives each worker
# one thread and orders the files heaviest first. TEST_WORKERS=0 runs in this process.
TEST_WORKERS ?= 2
test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --cov --cov-report= ; status=$$?; \
	$(BIN)/python tests/coverage_by_layer.py || true; exit $$status

coverage: test
	$(BIN)/python -m coverage html -d htmlcov
	@echo "coverage report: htmlcov/index.html"

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow and not multiproc"

# mypy over the package (config: [tool.mypy] in pyproject.toml); tests/test_types.py runs the same.
typecheck: install
	$(BIN)/python tests/typecheck.py

bench: install
	$(BIN)/python bench/run.py

schema: install
	$(BIN)/tabula schema --out schemas/tabula-spec.schema.json

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .coverage htmlcov

# The documentation site (mkdocs-material): built strictly (a broken link or a missing page fails) into
# build/site; the spec, CLI and shipped-spec references are generated from the schema, parsers and specs/.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet
	@echo "site: build/site/index.html"

docs-serve: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve
