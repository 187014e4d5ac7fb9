"""Django settings for ChatVault.

This is the only module that reads the process environment (through django-environ). Every other module reads
`django.conf.settings`. Every variable is listed, with its default, in `.env.example` and the README.
"""

from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# A `.env` file next to manage.py is read when present (made by `make run`); real environment variables win.
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DEBUG", default=False)

SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off.")
    SECRET_KEY = "insecure-dev-only-key-do-not-use-in-production"

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# --- HTTPS --------------------------------------------------------------------------------------------------------
# What `manage.py check --deploy` asks for, on by default whenever DEBUG is off, under Django's own names. Plain http
# on 127.0.0.1 turns the redirect and the secure cookies off: the `.env` that `make run` writes, and the tests.
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
# Only the pages people open in a browser are redirected (the admin, the API docs). The API, /healthz and /metrics
# answer plain http as they are: a load balancer's health check or a scraper must not get a 301, and a redirected
# POST would arrive as a GET without its body.
SECURE_REDIRECT_EXEMPT = [r"^(?!(admin|docs)(/|$))"]
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=not DEBUG)
# Sent on https responses only (browsers ignore it on http). A browser that saw it refuses plain http to this host
# for that long: try TLS out with a few minutes first. The preload directive is only consent; nothing happens until
# the domain's owner submits it to the browsers' preload list.
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 365 * 24 * 3600)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=not DEBUG)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=not DEBUG)
# Behind a proxy that terminates TLS, the ASGI server already tells Django which requests came over https: uvicorn
# and gunicorn take X-Forwarded-Proto from the addresses in --forwarded-allow-ips (default 127.0.0.1) only. This
# makes Django believe the header (e.g. `HTTP_X_FORWARDED_PROTO,https`) whoever sent it: set it only when every
# request reaches the app through a proxy that overwrites that header.
SECURE_PROXY_SSL_HEADER = env.tuple("SECURE_PROXY_SSL_HEADER", default=None)
if SECURE_PROXY_SSL_HEADER is not None and len(SECURE_PROXY_SSL_HEADER) != 2:
    raise ImproperlyConfigured(
        "SECURE_PROXY_SSL_HEADER must be a header and a value, e.g. HTTP_X_FORWARDED_PROTO,https."
    )

INSTALLED_APPS = [
    "chatvault_site.apps.AdminConfig",  # django.contrib.admin, with the dashboard as its index
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "axes",
    "drf_spectacular_sidecar",  # Swagger UI's files, for /docs/
    "routing.apps.RoutingConfig",
    "experiments.apps.ExperimentsConfig",
]

# The admin's middleware (and /v1/admin/'s, which accepts staff sessions). The model API paths do not go through
# this list: chatvault_site.handlers.APIHandler gives them a chain of their own, because each of these runs its hooks
# on a thread under ASGI.
MIDDLEWARE = [
    "routing.middleware.request_id_middleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: turns a refused admin sign-in into the lockout page.
    "axes.middleware.AxesMiddleware",
]

# Admin messages live in the session, not in a cookie (a new API key is shown on its own page, never in a message).
MESSAGE_STORAGE = "django.contrib.messages.storage.session.SessionStorage"

ROOT_URLCONF = "chatvault_site.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

ASGI_APPLICATION = "chatvault_site.asgi.application"

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=60)
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"]["TEST"] = {"NAME": env.str("TEST_DATABASE_NAME", default="test_chatvault")}
    # Fail a connection attempt to an unreachable server after this long instead of the OS's minutes.
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault(
        "connect_timeout", env.int("DATABASE_CONNECT_TIMEOUT", default=5)
    )

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# django-axes first: it refuses a locked-out sign-in before the password is checked.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

REST_FRAMEWORK = {
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": [],
    "EXCEPTION_HANDLER": "routing.errors.exception_handler",
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"LiteLLM": {"level": "WARNING"}, "httpx": {"level": "WARNING"}},
}

# --- Redis and Celery -------------------------------------------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="")
# Without a broker, tasks run in-process when called, so a single `make run` needs no extra service.
CELERY_TASK_ALWAYS_EAGER = not CELERY_BROKER_URL
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_RESULT_BACKEND = None
CELERY_TIMEZONE = TIME_ZONE

# --- ChatVault ----------------------------------------------------------------------------------------------------
CHATVAULT_ENCRYPTION_KEYS = env.list("CHATVAULT_ENCRYPTION_KEYS", default=[])
if not CHATVAULT_ENCRYPTION_KEYS and not DEBUG:
    raise ImproperlyConfigured(
        "CHATVAULT_ENCRYPTION_KEYS must be set when DEBUG is off (generate one with: "
        "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')."
    )

# Largest accepted request body; larger ones get 413 before any JSON is parsed.
CHATVAULT_MAX_BODY_BYTES = env.int("CHATVAULT_MAX_BODY_BYTES", default=4 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = CHATVAULT_MAX_BODY_BYTES
# How often each worker checks whether an admin changed the routing configuration.
CHATVAULT_CONFIG_POLL_SECONDS = env.float("CHATVAULT_CONFIG_POLL_SECONDS", default=1.0)
# Request-log batching: a batch is written when it is this big or this old, whichever comes first.
CHATVAULT_LOG_BATCH_SIZE = env.int("CHATVAULT_LOG_BATCH_SIZE", default=500)
CHATVAULT_LOG_FLUSH_SECONDS = env.float("CHATVAULT_LOG_FLUSH_SECONDS", default=0.5)
# Record every thread's stack when the event loop stalls over 1 ms (routing/loop_monitor.py; a diagnosis tool).
CHATVAULT_LOOP_STALL_STACKS = env.bool("CHATVAULT_LOOP_STALL_STACKS", default=False)
# How long a thread may hold the GIL before another that waits takes it (Python's default: 5 ms), set in each worker:
# bounds how long a background thread running Python can stall the event loop.
CHATVAULT_GIL_SWITCH_INTERVAL_MS = env.float("CHATVAULT_GIL_SWITCH_INTERVAL_MS", default=1.0)
# Serve the admin's static files from the ASGI app itself (turn off when a reverse proxy serves STATIC_ROOT).
CHATVAULT_SERVE_STATIC = env.bool("CHATVAULT_SERVE_STATIC", default=True)
# Upstream secrets written as `os.environ/NAME` are resolved from this process's environment at snapshot time.
CHATVAULT_UPSTREAM_ENV = env.ENVIRON

# --- Prometheus metrics (GET /metrics, routing/metrics.py) --------------------------------------------------------
# When set, scrapes must send `Authorization: Bearer <token>`; when empty, only local clients (loopback, through no
# proxy) are answered.
CHATVAULT_METRICS_TOKEN = env.str("CHATVAULT_METRICS_TOKEN", default="")
# With several workers, a directory of their own where every worker keeps its metric values, so that a scrape adds
# up all of them (prometheus_client's multiprocess mode, which reads this same variable). Empty: one worker's only.
PROMETHEUS_MULTIPROC_DIR = env.str("PROMETHEUS_MULTIPROC_DIR", default="")
if not PROMETHEUS_MULTIPROC_DIR:
    # prometheus_client turns its multiprocess mode on when the variable exists at all, even empty (then writing
    # its files to the working directory).
    env.ENVIRON.pop("PROMETHEUS_MULTIPROC_DIR", None)

# --- Admin login lockout (django-axes) ----------------------------------------------------------------------------
# Failed admin sign-ins are counted in the database (so every worker sees them) per username and, separately, per
# client address (REMOTE_ADDR: behind a proxy, have the ASGI server set it from X-Forwarded-For, see the README).
CHATVAULT_LOGIN_FAILURE_LIMIT = env.int("CHATVAULT_LOGIN_FAILURE_LIMIT", default=5)
if not 1 <= CHATVAULT_LOGIN_FAILURE_LIMIT <= 10:
    raise ImproperlyConfigured("CHATVAULT_LOGIN_FAILURE_LIMIT must be between 1 and 10.")
CHATVAULT_LOGIN_LOCKOUT_MINUTES = env.int("CHATVAULT_LOGIN_LOCKOUT_MINUTES", default=15)
if CHATVAULT_LOGIN_LOCKOUT_MINUTES < 1:
    raise ImproperlyConfigured("CHATVAULT_LOGIN_LOCKOUT_MINUTES must be at least 1.")
AXES_FAILURE_LIMIT = CHATVAULT_LOGIN_FAILURE_LIMIT
AXES_COOLOFF_TIME = timedelta(minutes=CHATVAULT_LOGIN_LOCKOUT_MINUTES)
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
# The lockout ends a fixed time after the failure that caused it; refused attempts meanwhile do not extend it.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
# Left off on purpose: a success would also clear its address's failures for other usernames, so anyone with one
# valid account could keep guessing another's password.
AXES_RESET_ON_SUCCESS = False
AXES_LOCKOUT_CALLABLE = "routing.admin.login_lockout_response"

# --- Celery beat --------------------------------------------------------------------------------------------------
# Beat only ticks; each instance's probe interval (RoutingSettings.health_check_interval_seconds) is enforced by
# the task, so admins change it without restarting beat. A tick still queued after 5 s is stale: drop it.
CELERY_BEAT_SCHEDULE = {
    "probe-instances": {"task": "routing.tasks.probe_instances", "schedule": 5.0, "options": {"expires": 5.0}},
    # Recomputes the hours since the newest rollup, or of the last 15 minutes if that is earlier: a request is logged
    # when it ends, so a long stream lands in a bucket that was already rolled up.
    "rollup-request-logs": {
        "task": "routing.tasks.rollup_request_logs",
        "schedule": 60.0,
        "kwargs": {"lookback_seconds": 15 * 60},
        "options": {"expires": 60.0},
    },
    # Assignment already ignores an experiment past its end time; this makes its status say it stopped.
    "stop-ended-experiments": {
        "task": "experiments.tasks.stop_ended_experiments",
        "schedule": 60.0,
        "options": {"expires": 60.0},
    },
    # Like rollup-request-logs: the hours since the newest experiment rollup, or of the last 15 minutes; feedback
    # written in that time counts in the hours of the requests it rates.
    "rollup-experiments": {
        "task": "experiments.tasks.rollup_experiments",
        "schedule": 60.0,
        "kwargs": {"lookback_seconds": 15 * 60},
        "options": {"expires": 60.0},
    },
    # The request log's day partitions for the week ahead; the days past the retention dropped (routing/partitions.py).
    "maintain-request-log": {
        "task": "routing.tasks.maintain_request_log",
        "schedule": 3600.0,
        "options": {"expires": 3600.0},
    },
}
