# `make test` and `make reproduce` each create .venv when it is missing.
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= default
STAMP := $(VENV)/.gfa-installed

.PHONY: test reproduce install clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

reproduce: $(STAMP)
	$(PY) -m figures --profile $(PROFILE)

clean:
	rm -rf $(VENV) results
