# ChatVault: `make run` starts a demo gateway on SQLite; `make test` runs the whole suite on Postgres.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
FAKE_PORT ?= 8001

# Tests use Postgres and production-like settings (DEBUG off, except the HTTPS redirect and secure cookies, which
# tests/conftest.py turns off: tests speak plain http); the key below is a test-only Fernet key.
TEST_ENV := DEBUG=false \
	DATABASE_URL=$${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/chatvault} \
	SECRET_KEY=test-only-secret-key \
	CHATVAULT_ENCRYPTION_KEYS=dGVzdC1vbmx5LWtleS1ub3Qtc2VjcmV0LTAwMDAwMDA=

.PHONY: run demo-secrets test install install-dev bench clean

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

# The demo's settings: a copy of .env.example (SQLite, plain http on 127.0.0.1: no https redirect, no secure-only
# cookies). Real deployments set their environment instead (README: Production settings).
.env:
	cp .env.example .env

# Fresh local secrets wherever .env leaves SECRET_KEY or CHATVAULT_ENCRYPTION_KEYS blank (in a .env copied from
# .env.example by hand too). One that is set is never replaced: stored upstream keys need the key they were stored with.
demo-secrets: install .env
	$(PY) -c "import secrets; from cryptography.fernet import Fernet; \
		fresh = {'SECRET_KEY': secrets.token_urlsafe(50), 'CHATVAULT_ENCRYPTION_KEYS': Fernet.generate_key().decode()}; \
		lines = open('.env').read().split('\n'); \
		lines = [line + fresh[line[:-1]] if line.endswith('=') and line[:-1] in fresh else line for line in lines]; \
		open('.env', 'w').write('\n'.join(lines))"

# Stops before changing anything when a demo already runs on this database or PORT / FAKE_PORT is taken.
run: demo-secrets
	$(PY) manage.py run_demo --host $(HOST) --port $(PORT) --fake-port $(FAKE_PORT)

test: install-dev
	$(VENV)/bin/ruff check chatvault_site routing experiments tests bench
	$(TEST_ENV) $(PY) -m pytest $(PYTEST_ARGS)

bench: install-dev
	$(TEST_ENV) $(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) db.sqlite3 .pytest_cache
