"""Settings, read from the environment in this one place, with defaults that run locally.

DATABASE_URL  default sqlite:///var/db.sqlite3 (WAL mode); e.g. postgres://user@host:5432/db
REDIS_URL     unset: in-memory channel layer, local bus only; set: Redis channel layer and distributed bus
REDIS_CHANNEL_LAYER core (default) or pubsub: the channels_redis layer configured with REDIS_URL (the
              server uses none; benchmarks/live_fanout.py measures a bare Channels consumer on it)
EVENT_BUS_REDIS_CHANNEL the Pub/Sub channel of the distributed bus (default eventbus:events)
LIVE_FEED_QUEUE_SIZE events queued per WebSocket before it gets a "gap" (default 1000)
EVENT_STATS_MAX_TYPES distinct event types (and tools, agents per metric) counted one by one in the
              statistics, the rest under "other" (default 1000)
SECRET_KEY    unset: a random key generated once and kept in var/secret_key
DEBUG         true/false (default false)
ALLOWED_HOSTS comma-separated (default 127.0.0.1,localhost)
METRICS_PUBLIC true/false (default true): whether GET /metrics needs no authentication

HTTPS (production defaults; each setting below can be set on its own and wins over HTTPS):
HTTPS         true/false: whether browsers reach this server over HTTPS (directly or through a proxy that
              terminates TLS). Default: true when DEBUG is off and ALLOWED_HOSTS names a host other than
              this machine's loopback (localhost, 127.0.0.1, ::1); false otherwise, so `make run`, the tests
              and the benchmarks keep serving plain http on 127.0.0.1. HTTPS=false on a public host name
              serves plain http there (not for production); HTTPS=true on localhost tries HTTPS locally.
SECURE_SSL_REDIRECT true/false (default HTTPS): redirect http:// requests to https://
SECURE_REDIRECT_EXEMPT comma-separated path regexes answered over http too (default ^healthz$,^metrics$:
              load balancers' probes and scrapers inside the network)
SECURE_HSTS_SECONDS (default 31536000, one year, with HTTPS; else 0): Strict-Transport-Security max-age
SECURE_HSTS_INCLUDE_SUBDOMAINS true/false (default HTTPS)
SECURE_HSTS_PRELOAD true/false (default false: asking browsers to preload the domain is the owner's call)
SESSION_COOKIE_SECURE, CSRF_COOKIE_SECURE true/false (default HTTPS): cookies sent over HTTPS only
SECURE_PROXY_SSL_HEADER behind a proxy that terminates TLS: the header and the value meaning https,
              e.g. HTTP_X_FORWARDED_PROTO,https (default unset). Set it only when the proxy always sets
              (or strips) that header, or a client could claim https; without it, behind such a proxy,
              SECURE_SSL_REDIRECT redirects forever. The WebSocket origin check reads it too.
A deployment's check: DEBUG=false SECRET_KEY=... ALLOWED_HOSTS=example.com SECURE_HSTS_PRELOAD=true
`manage.py check --deploy` prints no warnings (without SECURE_HSTS_PRELOAD it names that one).

Sign-in lock-out (django-axes, per username; the attempts in axes' own tables, in the admin):
AXES_FAILURE_LIMIT failed sign-ins of one username that lock it (default 5)
AXES_COOLOFF_MINUTES how long the lock-out lasts, counted from the failure that reached the limit, and
              how long failures count towards it (default 15)
"""

import ipaddress
import json
import os
import secrets
from datetime import timedelta
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
    if engine in ("django.db.backends.sqlite3", "core.sqlite3"):
        name = Path(config["NAME"])
        if str(name) != ":memory:":
            if not name.is_absolute():
                name = BASE_DIR / name
            name.parent.mkdir(parents=True, exist_ok=True)
            config["NAME"] = str(name)
        # One writer: WAL lets readers run beside it, IMMEDIATE transactions take the write lock up front,
        # and the backend queues this process's transactions in Python (core/sqlite3), so
        # "database is locked" cannot happen inside one process.
        config["ENGINE"] = "core.sqlite3"
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
        # While the database is unreachable, requests must fail fast (503 store_unavailable, core.outage)
        # and serve again as soon as it is back: a short wait for a connection (the pool's timeout), a
        # short connect timeout (a host that does not answer), reconnection attempts that give up when a
        # waiting request does (the pool's backoff would otherwise space them out for minutes; the next
        # request starts a new one at once), and every connection checked as the pool hands it out
        # (CONN_HEALTH_CHECKS: a connection the outage broke is replaced, never used).
        options = config.setdefault("OPTIONS", {})
        options.setdefault("connect_timeout", int(env_number("DATABASE_CONNECT_TIMEOUT", 2, minimum=2)))
        pool_timeout = env_number("DATABASE_POOL_TIMEOUT", 2, minimum=0.1)
        options["pool"] = {
            "min_size": 2,
            "max_size": int(env_number("DATABASE_POOL_SIZE", 20, minimum=1)),
            "timeout": pool_timeout,
            "reconnect_timeout": pool_timeout,
        }
        config["CONN_HEALTH_CHECKS"] = True
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
    "axes",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    # Swagger UI's files served by this app (/static/), so /api/docs/ loads nothing from a CDN.
    "drf_spectacular_sidecar",
    "channels",
    "core",
    "accounts",
    "events",
    "audit",
    "hitl",
    "notify",
    "ops",
]

MIDDLEWARE = [
    # First, so request latencies (GET /metrics) include every other middleware.
    "ops.metrics.RequestLatencyMiddleware",
    # A NUL or a lone surrogate in the path or the query string: a 400 before anything queries with it.
    "core.middleware.URLTextMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # An unreachable database met by a view outside DRF: 503 (JSON under /api/), not 500.
    "core.outage.StoreOutageMiddleware",
    # Last, as axes asks: turns a refused sign-in of a locked-out username into the lock-out page.
    "axes.middleware.AxesMiddleware",
]

# axes' backend first: it refuses a locked-out username before ModelBackend checks the password.
AUTHENTICATION_BACKENDS = [
    "accounts.sign_in.SignInLockoutBackend",
    "django.contrib.auth.backends.ModelBackend",
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
# One date format everywhere (admin and pages): "2026-12-05 03:17:26 UTC" (eventbus_project/formats).
FORMAT_MODULE_PATH = ["eventbus_project.formats"]

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
LOGIN_URL = "/admin/login/"
# Signing out (admin or pages) lands on the overview, which sends the signed-out user to sign in again.
LOGOUT_REDIRECT_URL = "/"

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # Bearer first: its WWW-Authenticate header makes "not authenticated" a 401, not a 403.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.auth.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # Every JSON body through the one entrance (core.json_input): depth, NUL, lone surrogates, NaN.
    "DEFAULT_PARSER_CLASSES": ["core.parsers.StrictJSONParser"],
    "EXCEPTION_HANDLER": "core.errors.api_exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Agent event bus API",
    "DESCRIPTION": "Events, audit trail and human approval of AI agents' tool calls.",
    "VERSION": "0.1.0",
    # Swagger UI and ReDoc from drf_spectacular_sidecar's static files, not from a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # No "valid" badge fetched from validator.swagger.io either (drf-spectacular's default plus this).
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
}

# How long who an API token is (and its permissions) is kept in memory (accounts.auth; 0: never).
API_TOKEN_CACHE_S = env_number("API_TOKEN_CACHE_S", 5, minimum=0)

# The JSON entrance (core.json_input): how deeply any JSON the server takes may nest.
JSON_MAX_DEPTH = int(env_number("JSON_MAX_DEPTH", 64, minimum=2))

# POST /api/events/ refuses bodies larger than this (413) before reading them; events.conf reads it.
# How long POST /api/events/ (and OTLP) waits for the commit before answering 503 store_unavailable.
EVENTS_COMMIT_WAIT_S = env_number("EVENTS_COMMIT_WAIT_S", 2.0, minimum=0.1)
EVENTS_MAX_BODY_BYTES = int(env_number("EVENTS_MAX_BODY_BYTES", 8 * 1024 * 1024, minimum=1))

# Human approval (hitl.conf reads these): how long a request waits by default and at most, how often
# the server sweeps overdue ones, and how often a waiter re-checks for decisions made elsewhere.
HITL_DEFAULT_TIMEOUT_S = env_number("HITL_DEFAULT_TIMEOUT_S", 900, minimum=1)
HITL_MAX_TIMEOUT_S = env_number("HITL_MAX_TIMEOUT_S", 7 * 24 * 3600, minimum=1)
HITL_SWEEP_INTERVAL_S = env_number("HITL_SWEEP_INTERVAL_S", 1.0, minimum=0.05)
# The safety net behind the bus: with Redis, decisions made in other processes wake waiters at once.
HITL_RECHECK_INTERVAL_S = env_number("HITL_RECHECK_INTERVAL_S", 10.0, minimum=0.05)
# A call_id's owner has at most this many pending requests (429 beyond).
HITL_MAX_PENDING_PER_AGENT = int(env_number("HITL_MAX_PENDING_PER_AGENT", 100, minimum=1))
# With on_expire "approve", the deadline must leave at least this long for someone to look.
HITL_MIN_AUTO_APPROVE_S = env_number("HITL_MIN_AUTO_APPROVE_S", 10, minimum=0)
# JSON Schemas of tools' arguments, checked when an operator edits them: {"tool_name": {...schema...}}.
# HITL_TOOL_SCHEMAS_FILE names a JSON file of that shape (`make demo` writes the simulator's there).
HITL_TOOL_SCHEMAS: dict[str, Any] = {}


def _tool_schemas_file(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as file:
            schemas = json.load(file)
    except (OSError, ValueError) as error:
        raise ImproperlyConfigured(
            f"HITL_TOOL_SCHEMAS_FILE={path!r} could not be read as JSON: {error}"
        ) from None
    if not isinstance(schemas, dict) or not all(
        isinstance(name, str) and isinstance(schema, dict) for name, schema in schemas.items()
    ):
        raise ImproperlyConfigured(
            f"HITL_TOOL_SCHEMAS_FILE={path!r} must hold one JSON object: tool name -> its JSON Schema"
        )
    return schemas


if os.environ.get("HITL_TOOL_SCHEMAS_FILE"):
    HITL_TOOL_SCHEMAS = _tool_schemas_file(os.environ["HITL_TOOL_SCHEMAS_FILE"])
# The largest `arguments` (and `modified_args`) an approval request takes, in bytes of compact JSON.
HITL_MAX_ARGUMENTS_BYTES = int(env_number("HITL_MAX_ARGUMENTS_BYTES", 64 * 1024, minimum=2))

# Notifications (notify.conf reads these; docs/notifications.md). Webhooks: https only and never this
# machine's loopback unless allowed (local tests), retried with backoff for WEBHOOK_RETRY_HOURS, then the
# endpoint is disabled. HITL_WARN_BEFORE_S: a tool_approval_expiring event that long before a deadline
# (0: none). NOTIFY_EMAIL_DIGEST_S: 0 sends an e-mail per request, else one digest per person per period.
# NOTIFY_BASE_URL: where links in e-mails and Slack messages point.
WEBHOOK_RETRY_HOURS = env_number("WEBHOOK_RETRY_HOURS", 24, minimum=0)
WEBHOOK_TIMEOUT_S = env_number("WEBHOOK_TIMEOUT_S", 10, minimum=0.01)
WEBHOOK_ALLOW_HTTP = env_bool("WEBHOOK_ALLOW_HTTP", False)
WEBHOOK_ALLOW_LOOPBACK = env_bool("WEBHOOK_ALLOW_LOOPBACK", False)
HITL_WARN_BEFORE_S = env_number("HITL_WARN_BEFORE_S", 60, minimum=0)
NOTIFY_EMAIL_DIGEST_S = env_number("NOTIFY_EMAIL_DIGEST_S", 0, minimum=0)
NOTIFY_BASE_URL = os.environ.get("NOTIFY_BASE_URL", "").strip() or "http://127.0.0.1:8000"
SLACK_BOT_TOKEN = os.environ.get("SLACK_BOT_TOKEN", "").strip()
SLACK_SIGNING_SECRET = os.environ.get("SLACK_SIGNING_SECRET", "").strip()
SLACK_CHANNEL = os.environ.get("SLACK_CHANNEL", "").strip()
SLACK_API_URL = os.environ.get("SLACK_API_URL", "").strip() or "https://slack.com/api/"
# Django's e-mail framework (the SMTP backend by default).
# The e-mail notifier runs when a mail server is named (EMAIL_HOST or EMAIL_BACKEND), or NOTIFY_EMAIL says
# so: a server started without one does not try localhost:25 for every request.
NOTIFY_EMAIL = env_bool(
    "NOTIFY_EMAIL",
    bool(os.environ.get("EMAIL_HOST", "").strip() or os.environ.get("EMAIL_BACKEND", "").strip()),
)
if os.environ.get("EMAIL_BACKEND", "").strip():
    EMAIL_BACKEND = os.environ["EMAIL_BACKEND"].strip()
EMAIL_HOST = os.environ.get("EMAIL_HOST", "").strip() or "localhost"
EMAIL_PORT = int(env_number("EMAIL_PORT", 25, minimum=1))
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "").strip()
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "").strip()
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "").strip() or "eventbus@localhost"

# Evidence (audit.signing, docs/auditors.md): the Ed25519 key (PEM, `manage.py audit_keygen PATH`) that
# signs the chain's head after each commit and purge permits (none: nothing is signed); the file outside
# the database each signed head is appended to (one JSON line each); how many days purges must keep.
AUDIT_SIGNING_KEY_FILE = os.environ.get("AUDIT_SIGNING_KEY_FILE", "").strip() or None
AUDIT_WITNESS_FILE = os.environ.get("AUDIT_WITNESS_FILE", "").strip() or None
AUDIT_RETENTION_DAYS = env_number("AUDIT_RETENTION_DAYS", 183, minimum=0)

# Sign-in lock-out (django-axes; CONTRACT.md, "The trust boundary"): AXES_FAILURE_LIMIT failures of one
# username within AXES_COOLOFF_TIME lock that username, whatever the address, for AXES_COOLOFF_TIME from
# the failure that reached the limit; attempts refused meanwhile do not extend it (nor are they counted,
# nor audited: the lock-out is audited once, events.signals.on_locked_out).
AXES_FAILURE_LIMIT = int(env_number("AXES_FAILURE_LIMIT", 5, minimum=1))
AXES_COOLOFF_TIME = timedelta(minutes=env_number("AXES_COOLOFF_MINUTES", 15, minimum=0.01))
AXES_LOCKOUT_PARAMETERS = ["username"]
# axes.W006 asks for ip_address too, against rotating user agents or cookies, which do not get round a
# lock-out per username. Per address would lock everyone behind one proxy (or NAT) out together.
SILENCED_SYSTEM_CHECKS = ["axes.W006"]
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_LOCKOUT_CALLABLE = "accounts.sign_in.lockout_response"

# HTTPS (see the docstring): production defaults for a deployment, plain http on this machine's loopback.
_LOOPBACK_NAMES = {"localhost", ".localhost"}


def _loopback_only(hosts: list[str]) -> bool:
    """Whether every allowed host is this machine's loopback (so no browser elsewhere can reach it)."""

    def loopback(host: str) -> bool:
        if host in _LOOPBACK_NAMES or host.endswith(".localhost"):
            return True
        try:
            return ipaddress.ip_address(host.strip("[]")).is_loopback
        except ValueError:
            return False

    return bool(hosts) and all(loopback(host.lower()) for host in hosts)


def _proxy_ssl_header() -> tuple[str, str] | None:
    raw = os.environ.get("SECURE_PROXY_SSL_HEADER", "").strip()
    if not raw:
        return None
    header, _, value = (part.strip() for part in raw.partition(","))
    if not header.startswith("HTTP_") or not value or "," in value:
        raise ImproperlyConfigured(
            f"SECURE_PROXY_SSL_HEADER={raw!r} must be a header and a value, e.g. HTTP_X_FORWARDED_PROTO,https"
        )
    return header, value


HTTPS = env_bool("HTTPS", not DEBUG and not _loopback_only(ALLOWED_HOSTS))
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", HTTPS)
SECURE_REDIRECT_EXEMPT = env_list("SECURE_REDIRECT_EXEMPT", r"^healthz$,^metrics$")
SECURE_HSTS_SECONDS = int(env_number("SECURE_HSTS_SECONDS", 365 * 24 * 3600 if HTTPS else 0))
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", HTTPS)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", HTTPS)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", HTTPS)
SECURE_PROXY_SSL_HEADER = _proxy_ssl_header()

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

# Statistics (/api/stats/, /api/metrics/): how many distinct event types, and tools or agents per metric,
# are counted one by one; the rest count under "other", so made-up names cannot grow them without bound.
EVENT_STATS_MAX_TYPES = int(env_number("EVENT_STATS_MAX_TYPES", 1000, minimum=1))

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
        "notify": {"level": "INFO"},
    },
}
