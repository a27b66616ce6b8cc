# selfsup: `make run` sets everything up and runs the main job; `make test` sets everything up and runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
ARGS   ?=

.PHONY: run test setup data photos browser bench clean help

help:
	@echo "make run    set up (.venv, Fashion-MNIST), pretrain for 5 minutes (preset fast-cpu: VICReg), then evaluate"
	@echo "make test   set up and run the test suite"
	@echo "make bench  run the benchmarks (minutes to hours; writes docs/benchmarks.md)"
	@echo "make photos colour photographs for the colour-only studies (Debian's mate-backgrounds)"

$(BIN)/selfsup: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

setup: $(BIN)/selfsup

# Fashion-MNIST: Debian's package when we may install it, else torchvision's download (scripts/get-data.sh says which).
data: setup
	@sh scripts/get-data.sh $(BIN)

# Colour photographs for the colour-only studies (Debian's mate-backgrounds when we may install it).
photos:
	@sh scripts/get-photos.sh

# Debian's chromium for the browser test of report.html (the test skips without it); never fails the build.
browser:
	@sh scripts/get-browser.sh

run: data
	$(BIN)/selfsup run --preset fast-cpu --data fashion-mnist --minutes 5 $(ARGS)

test: data browser
	@# pytest exits 5 when it collects nothing: say so instead of passing silently.
	$(BIN)/python -m pytest -q $(ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: check tests/ and ARGS"; fi; exit $$rc

bench: data
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/quality_at_budget.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
