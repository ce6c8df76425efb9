# make demo   the quickstart on a fresh machine (no network, CPU): config/quickstart.yaml -> results/
# make test   the test suite (what CI runs)
# make bench  the benchmarks of bench/ (prints figures; see bench/README.md)
# make results  every config/laptop/*.yaml into results/laptop (finished work is skipped), then docs/results.md
# Each target installs what it needs into .venv first: torch==2.13.0 before everything else, then requirements.txt,
# then the lab itself as an editable install without dependencies (pyproject.toml declares none).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test bench results clean

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

install: $(VENV)/.installed

demo: install
	HF_HUB_OFFLINE=1 $(PY) run.py --config config/quickstart.yaml --output results

# One pytest worker per core (pytest-xdist), each test file on one worker so its module fixtures are made once;
# files in collection order (tests/e2e, the longest, first), not most tests first, which left a worker alone with
# the one-test end-to-end files (up to 2 CPU min) at the end.
test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -n auto --dist loadfile --no-loadscope-reorder

bench: install
	HF_HUB_OFFLINE=1 $(PY) bench/train_throughput.py
	HF_HUB_OFFLINE=1 $(PY) bench/landscape_speed.py
	HF_HUB_OFFLINE=1 $(PY) bench/sharpness_speed.py --arch both
	HF_HUB_OFFLINE=1 $(PY) bench/geometry_speed.py --arch both
	HF_HUB_OFFLINE=1 $(PY) bench/tracking_speed.py
	HF_HUB_OFFLINE=1 env -u OMP_NUM_THREADS $(PY) bench/threads.py

# Each laptop config runs to the end (its stages skip what is done), then docs/results.md is regenerated from the
# finished experiments' summaries, copied into docs/results/ with their headline figures. The searches of
# config/laptop/search/ run first (exp7.yaml's run `best` holds the values its search found).
results: install
	for config in config/laptop/search/*.yaml config/laptop/*.yaml; do \
		$(PY) run.py --config $$config --output results/laptop || exit $$?; done
	$(PY) -m report.results_doc --collect results/laptop

clean:
	rm -rf results .pytest_cache
