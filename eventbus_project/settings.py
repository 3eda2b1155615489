"""Settings, read from the environment in this one place, with defaults that run locally.

DATABASE_URL  default sqlite:///var/db.sqlite3 (WAL mode); e.g. postgres://user@host:5432/db
REDIS_URL     unset: in-memory channel layer, local bus only; set: Redis channel layer and distributed bus
REDIS_CHANNEL_LAYER core (default) or pubsub: which channels_redis layer, with REDIS_URL
EVENT_BUS_REDIS_CHANNEL the Pub/Sub channel of the distributed bus (default eventbus:events)
LIVE_FEED_QUEUE_SIZE events queued per WebSocket before it gets a "gap" (default 1000)
SECRET_KEY    unset: a random key generated once and kept in var/secret_key
DEBUG         true/false (default false)
ALLOWED_HOSTS comma-separated (default 127.0.0.1,localhost)
METRICS_PUBLIC true/false (default true): whether GET /metrics needs no authentication
"""

import os
import secrets
from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("VAR_DIR", BASE_DIR / "var"))

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_bool(name: str, default: bool) -> bool:
    """Read a boolean environment variable, refusing values that are neither true nor false."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean; use true or false")


def env_list(name: str, default: str) -> list[str]:
    """Read a comma-separated environment variable."""
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def env_number(name: str, default: float, minimum: float = 0) -> float:
    """Read a number from the environment, refusing what is not one."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name}={raw!r} must be at least {minimum}")
    return value


def _secret_key() -> str:
    key = os.environ.get("SECRET_KEY", "").strip()
    if key:
        return key
    # No key given: generate one per checkout and keep it, so sessions survive restarts.
    path = VAR_DIR / "secret_key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(50)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(key)
        return key


def _database() -> dict[str, Any]:
    url = os.environ.get("DATABASE_URL", "").strip() or f"sqlite:///{VAR_DIR / 'db.sqlite3'}"
    try:
        config: dict[str, Any] = dict(dj_database_url.parse(url, conn_max_age=0))
    except Exception as error:  # dj-database-url raises several types for a bad URL
        raise ImproperlyConfigured(f"DATABASE_URL is not a usable database URL: {error}") from None
    engine = config["ENGINE"]
    if engine in ("django.db.backends.sqlite3", "eventbus_project.sqlite3"):
        name = Path(config["NAME"])
        if str(name) != ":memory:":
            if not name.is_absolute():
                name = BASE_DIR / name
            name.parent.mkdir(parents=True, exist_ok=True)
            config["NAME"] = str(name)
        # One writer: WAL lets readers run beside it, IMMEDIATE transactions take the write lock up front,
        # and the backend queues this process's transactions in Python (eventbus_project/sqlite3), so
        # "database is locked" cannot happen inside one process.
        config["ENGINE"] = "eventbus_project.sqlite3"
        config["OPTIONS"] = {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
        }
        # Tests run on a file too: the store's writer thread needs its own connection to the same
        # database, which an in-memory database cannot give with WAL.
        # One file per test run, so runs side by side do not share it (the runner deletes it at the end).
        config["TEST"] = {"NAME": str(VAR_DIR / f"test_db_{os.getpid()}.sqlite3")}
    elif engine == "django.db.backends.postgresql":
        # A pool rather than a connection per worker-thread call: async views and the long-poll run
        # their queries on worker threads, and a new PostgreSQL connection costs milliseconds.
        config.setdefault("OPTIONS", {})["pool"] = {
            "min_size": 2,
            "max_size": int(env_number("DATABASE_POOL_SIZE", 20, minimum=1)),
            "timeout": 10,
        }
    else:
        raise ImproperlyConfigured(f"DATABASE_URL names {engine}; use sqlite:// or postgres://")
    return config


SECRET_KEY = _secret_key()
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")
REDIS_URL = os.environ.get("REDIS_URL", "").strip() or None
if REDIS_URL and not REDIS_URL.startswith(("redis://", "rediss://", "unix://")):
    raise ImproperlyConfigured(f"REDIS_URL={REDIS_URL!r} must start with redis://, rediss:// or unix://")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "channels",
    "core",
    "events",
    "audit",
    "hitl",
]

MIDDLEWARE = [
    # First, so request latencies (GET /metrics) include every other middleware.
    "audit.metrics.RequestLatencyMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "eventbus_project.urls"
ASGI_APPLICATION = "eventbus_project.asgi.application"

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

DATABASES = {"default": _database()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Which channels_redis layer (benchmarks/live_fanout.py measures both; the README says why core).
REDIS_CHANNEL_LAYER = os.environ.get("REDIS_CHANNEL_LAYER", "core").strip() or "core"
if REDIS_CHANNEL_LAYER not in ("core", "pubsub"):
    raise ImproperlyConfigured(f"REDIS_CHANNEL_LAYER={REDIS_CHANNEL_LAYER!r} must be core or pubsub")
if REDIS_URL and REDIS_CHANNEL_LAYER == "pubsub":
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL]},
        }
    }
elif REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "capacity": 1000, "expiry": 30},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
LOGIN_URL = "/admin/login/"

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # Bearer first: its WWW-Authenticate header makes "not authenticated" a 401, not a 403.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "events.auth.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "EXCEPTION_HANDLER": "eventbus_project.exceptions.api_exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Agent event bus API",
    "DESCRIPTION": "Events, audit trail and human approval of AI agents' tool calls.",
    "VERSION": "0.1.0",
}

# The JSON entrance (core.json_input): how deeply any JSON the server takes may nest.
JSON_MAX_DEPTH = int(env_number("JSON_MAX_DEPTH", 64, minimum=2))

# POST /api/events/ refuses bodies larger than this (413) before reading them; events.conf reads it.
EVENTS_MAX_BODY_BYTES = int(env_number("EVENTS_MAX_BODY_BYTES", 8 * 1024 * 1024, minimum=1))

# Human approval (hitl.conf reads these): how long a request waits by default and at most, how often
# the server sweeps overdue ones, and how often a waiter re-checks for decisions made elsewhere.
HITL_DEFAULT_TIMEOUT_S = env_number("HITL_DEFAULT_TIMEOUT_S", 900, minimum=1)
HITL_MAX_TIMEOUT_S = env_number("HITL_MAX_TIMEOUT_S", 7 * 24 * 3600, minimum=1)
HITL_SWEEP_INTERVAL_S = env_number("HITL_SWEEP_INTERVAL_S", 1.0, minimum=0.05)
# The safety net behind the bus: with Redis, decisions made in other processes wake waiters at once.
HITL_RECHECK_INTERVAL_S = env_number("HITL_RECHECK_INTERVAL_S", 10.0, minimum=0.05)
# JSON Schemas of tools' arguments, checked when an operator edits them: {"tool_name": {...schema...}}.
HITL_TOOL_SCHEMAS: dict[str, Any] = {}

# GET /metrics: open to anyone (Prometheus scrapers) or, when false, to operators and auditors only.
METRICS_PUBLIC = env_bool("METRICS_PUBLIC", True)

# The in-process bus (events.conf reads these).
EVENT_BUS = {
    "MAX_QUEUE_SIZE": int(env_number("EVENT_BUS_MAX_QUEUE_SIZE", 10_000, minimum=1)),
    "OVERFLOW": os.environ.get("EVENT_BUS_OVERFLOW", "wait"),
    "HANDLER_TIMEOUT": env_number("EVENT_BUS_HANDLER_TIMEOUT", 30.0, minimum=0) or None,
    "SHUTDOWN_TIMEOUT": env_number("EVENT_BUS_SHUTDOWN_TIMEOUT", 30.0, minimum=0),
    # The Redis Pub/Sub channel the processes of one deployment share (with REDIS_URL).
    "REDIS_CHANNEL": os.environ.get("EVENT_BUS_REDIS_CHANNEL", "").strip() or "eventbus:events",
}

# Live feeds (/ws/events/, /ws/hitl/): events queued per connection before it gets a "gap", and how often
# a process looks for events other processes stored when nothing (Redis) told it.
LIVE_FEED = {
    "QUEUE_SIZE": int(env_number("LIVE_FEED_QUEUE_SIZE", 1000, minimum=1)),
    "POLL_INTERVAL": env_number("LIVE_FEED_POLL_INTERVAL", 0.5, minimum=0.01),
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "events": {"level": os.environ.get("EVENTS_LOG_LEVEL", "INFO")},
        "audit": {"level": "INFO"},
        "hitl": {"level": "INFO"},
    },
}
