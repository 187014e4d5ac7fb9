# ChatVault: `make run` starts a demo gateway on SQLite; `make test` runs the whole suite on Postgres.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
FAKE_PORT ?= 8001

# Tests use Postgres and production-like settings (DEBUG off); the key below is a test-only Fernet key.
TEST_ENV := DEBUG=false \
	DATABASE_URL=$${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/chatvault} \
	SECRET_KEY=test-only-secret-key \
	CHATVAULT_ENCRYPTION_KEYS=dGVzdC1vbmx5LWtleS1ub3Qtc2VjcmV0LTAwMDAwMDA=

.PHONY: run test install install-dev bench clean

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

# Local secrets for the demo, made once; real deployments set these in their environment instead.
.env:
	$(PY) -c "import secrets; from cryptography.fernet import Fernet; open('.env', 'w').write('# Made by make run for the local demo; not for production.\nDEBUG=false\nSECRET_KEY=' + secrets.token_urlsafe(50) + '\nCHATVAULT_ENCRYPTION_KEYS=' + Fernet.generate_key().decode() + '\n')"

run: install .env
	$(PY) manage.py run_demo --host $(HOST) --port $(PORT) --fake-port $(FAKE_PORT)

test: install-dev
	$(VENV)/bin/ruff check chatvault_site routing experiments tests bench
	$(TEST_ENV) $(PY) -m pytest $(PYTEST_ARGS)

bench: install-dev
	$(TEST_ENV) $(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) db.sqlite3 .pytest_cache
