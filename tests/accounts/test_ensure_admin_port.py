"""ensure_admin prints the address `make run` serves, PORT and HOST included."""

import io

import pytest
from django.core.management import call_command

pytestmark = pytest.mark.django_db


def test_ensure_admin_port_from_options():
    out = io.StringIO()
    call_command("ensure_admin", "--host", "0.0.0.0", "--port", "8123", stdout=out)
    assert "sign in at http://0.0.0.0:8123/admin/" in out.getvalue()


def test_ensure_admin_port_from_environment(monkeypatch):
    monkeypatch.setenv("PORT", "9001")
    monkeypatch.delenv("HOST", raising=False)
    out = io.StringIO()
    call_command("ensure_admin", stdout=out)
    assert "sign in at http://127.0.0.1:9001/admin/" in out.getvalue()


def test_ensure_admin_port_make_run_passes_it():
    from pathlib import Path

    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    assert "manage.py ensure_admin --host $(HOST) --port $(PORT)" in makefile
