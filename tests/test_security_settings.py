"""HTTPS settings from the environment (production defaults for a deployment, plain http on this machine's
loopback), and /api/docs/ served without another origin."""

import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from channels.testing import HttpCommunicator
from django.contrib.staticfiles import finders
from django.test import Client, override_settings

from eventbus_project.asgi import application

ROOT = Path(__file__).resolve().parent.parent
HTTPS_VARIABLES = (
    "HTTPS",
    "SECURE_SSL_REDIRECT",
    "SECURE_REDIRECT_EXEMPT",
    "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "SECURE_HSTS_PRELOAD",
    "SESSION_COOKIE_SECURE",
    "CSRF_COOKIE_SECURE",
    "SECURE_PROXY_SSL_HEADER",
)
DEPLOY_WARNINGS = ("security.W004", "security.W008", "security.W012", "security.W016")
SHOWN = (
    "HTTPS",
    "SECURE_SSL_REDIRECT",
    "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "SECURE_HSTS_PRELOAD",
    "SESSION_COOKIE_SECURE",
    "CSRF_COOKIE_SECURE",
    "SECURE_PROXY_SSL_HEADER",
)


def environment(tmp_path: Path, **variables: str) -> dict[str, str]:
    """This process's environment without any HTTPS choice of the caller's, plus `variables`."""
    env = {name: value for name, value in os.environ.items() if name not in HTTPS_VARIABLES}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.update(VAR_DIR=str(tmp_path), SECRET_KEY=secrets.token_urlsafe(50), **variables)
    return env


def settings_under(tmp_path: Path, **variables: str) -> dict:
    """The HTTPS settings the settings module computes from `variables` (in a fresh interpreter)."""
    names = ", ".join(f"{name!r}: settings.{name}" for name in SHOWN)
    code = f"import json; from eventbus_project import settings; print(json.dumps({{{names}}}))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=environment(tmp_path, **variables),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def deploy_check(tmp_path: Path, **variables: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy"],
        cwd=ROOT,
        env=environment(tmp_path, **variables),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


def test_a_deployment_passes_the_deploy_checks(tmp_path):
    output = deploy_check(tmp_path, DEBUG="false", ALLOWED_HOSTS="example.com")
    for warning in DEPLOY_WARNINGS:
        assert warning not in output, output
    # Preloading is the domain owner's decision: with it, nothing at all is left to warn about.
    output = deploy_check(tmp_path, DEBUG="false", ALLOWED_HOSTS="example.com", SECURE_HSTS_PRELOAD="true")
    assert "System check identified no issues" in output, output


def test_a_deployment_gets_production_defaults(tmp_path):
    shown = settings_under(tmp_path, DEBUG="false", ALLOWED_HOSTS="example.com,127.0.0.1")
    assert shown == {
        "HTTPS": True,
        "SECURE_SSL_REDIRECT": True,
        "SECURE_HSTS_SECONDS": 365 * 24 * 3600,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": True,
        "SECURE_HSTS_PRELOAD": False,
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True,
        "SECURE_PROXY_SSL_HEADER": None,
    }


@pytest.mark.parametrize(
    "variables",
    [
        {"DEBUG": "false", "ALLOWED_HOSTS": "127.0.0.1,localhost"},  # make run, the tests, the benchmarks
        {"DEBUG": "false", "ALLOWED_HOSTS": "127.0.0.1"},  # the browser tests, .ci/schemathesis.sh
        {"DEBUG": "false", "ALLOWED_HOSTS": "[::1],app.localhost"},
        {"DEBUG": "true", "ALLOWED_HOSTS": "example.com"},
        {"DEBUG": "false", "ALLOWED_HOSTS": "example.com", "HTTPS": "false"},
    ],
)
def test_plain_http_on_the_loopback_in_debug_or_when_asked(tmp_path, variables):
    shown = settings_under(tmp_path, **variables)
    assert shown["HTTPS"] is False
    assert not shown["SECURE_SSL_REDIRECT"] and not shown["SECURE_HSTS_SECONDS"]
    assert not shown["SESSION_COOKIE_SECURE"] and not shown["CSRF_COOKIE_SECURE"]


def test_each_setting_wins_over_the_default(tmp_path):
    shown = settings_under(
        tmp_path,
        DEBUG="false",
        ALLOWED_HOSTS="example.com",
        SECURE_SSL_REDIRECT="false",
        SECURE_HSTS_SECONDS="600",
        SECURE_HSTS_INCLUDE_SUBDOMAINS="false",
        SECURE_HSTS_PRELOAD="true",
        SESSION_COOKIE_SECURE="false",
        SECURE_PROXY_SSL_HEADER="HTTP_X_FORWARDED_PROTO, https",
    )
    assert shown["SECURE_SSL_REDIRECT"] is False
    assert shown["SECURE_HSTS_SECONDS"] == 600
    assert shown["SECURE_HSTS_INCLUDE_SUBDOMAINS"] is False
    assert shown["SECURE_HSTS_PRELOAD"] is True
    assert shown["SESSION_COOKIE_SECURE"] is False
    assert shown["CSRF_COOKIE_SECURE"] is True
    assert shown["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]


@pytest.mark.parametrize("value", ["X_FORWARDED_PROTO,https", "HTTP_X_FORWARDED_PROTO", "HTTP_X,https,http"])
def test_a_malformed_proxy_header_is_refused_at_start_up(tmp_path, value):
    result = subprocess.run(
        [sys.executable, "-c", "import eventbus_project.settings"],
        cwd=ROOT,
        env=environment(tmp_path, SECURE_PROXY_SSL_HEADER=value),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "SECURE_PROXY_SSL_HEADER" in result.stderr


@pytest.mark.django_db
def test_the_tests_are_served_over_plain_http(client):
    response = client.get("/admin/login/")
    assert response.status_code == 200
    assert "Strict-Transport-Security" not in response.headers


@pytest.mark.django_db
@override_settings(SECURE_SSL_REDIRECT=True, SECURE_HSTS_SECONDS=3600, SECURE_REDIRECT_EXEMPT=[r"^healthz$"])
def test_with_https_plain_http_is_redirected_but_the_health_probe_is_not():
    client = Client()
    response = client.get("/admin/login/")
    assert response.status_code == 301
    assert response.headers["Location"] == "https://testserver/admin/login/"
    assert client.get("/healthz").status_code in (200, 503)
    secure = client.get("/admin/login/", secure=True)
    assert secure.status_code == 200
    assert secure.headers["Strict-Transport-Security"].startswith("max-age=3600")


@pytest.mark.django_db
@override_settings(SECURE_SSL_REDIRECT=True, SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https"))
def test_behind_a_tls_proxy_the_forwarded_scheme_is_trusted():
    response = Client().get("/admin/login/", headers={"X-Forwarded-Proto": "https"})
    assert response.status_code == 200


# /api/docs/ offline


ASSET = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")


@pytest.mark.django_db
def test_the_api_docs_load_nothing_from_another_origin(client):
    response = client.get("/api/docs/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "cdn" not in page.lower()
    assert "https://" not in page and "http://" not in page
    assets = ASSET.findall(page)
    assert assets, page
    for url in assets:
        assert url.startswith("/") and not url.startswith("//"), url
    # Swagger UI's check of the schema against validator.swagger.io is off.
    assert '"validatorUrl": null' in page


@pytest.mark.django_db
def test_the_api_docs_assets_are_static_files_of_this_app(client):
    page = client.get("/api/docs/").content.decode()
    for url in ASSET.findall(page):
        assert url.startswith("/static/"), url
        assert finders.find(url.removeprefix("/static/")), f"{url} is no static file of the app"


async def test_daphne_serves_the_api_docs_assets():
    """Under Daphne (make run), the ASGI application serves the static files itself, DEBUG or not."""
    path = "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js"
    communicator = HttpCommunicator(application, "GET", path, headers=[(b"host", b"127.0.0.1:8000")])
    await communicator.send_input({"type": "http.request", "body": b""})
    start = await communicator.receive_output(10)
    assert start["type"] == "http.response.start" and start["status"] == 200
    body = b""
    while True:
        message = await communicator.receive_output(10)
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    assert b"SwaggerUIBundle" in body
