"""HITL_TOOL_SCHEMAS_FILE: a server (the demo's) checks edits against schemas it reads from a file."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command

from eventbus_project import settings as project_settings
from hitl.apps import check_tool_schemas
from hitl.simulation import TOOL_SCHEMAS

ROOT = Path(__file__).resolve().parents[2]


def test_write_schemas_writes_every_simulated_tools_schema_and_the_settings_read_them_back(tmp_path):
    path = tmp_path / "nested" / "schemas.json"
    call_command("simulate_agents", "--write-schemas", str(path))
    assert json.loads(path.read_text()) == TOOL_SCHEMAS
    assert project_settings._tool_schemas_file(str(path)) == TOOL_SCHEMAS


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "could not be read"),
        ("{nope", "could not be read"),
        ('["a"]', "one JSON object"),
        ('{"t": 3}', "one JSON object"),
    ],
)
def test_an_unreadable_or_misshapen_schemas_file_stops_start_up_naming_the_variable(tmp_path, content, says):
    path = tmp_path / "schemas.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ImproperlyConfigured, match="HITL_TOOL_SCHEMAS_FILE") as raised:
        project_settings._tool_schemas_file(str(path))
    assert says in str(raised.value)


def test_a_schema_that_is_not_a_json_schema_stops_start_up_naming_the_tool(settings):
    settings.HITL_TOOL_SCHEMAS = {"refund_payment": {"type": "no-such-type"}}
    with pytest.raises(
        ImproperlyConfigured, match=r"HITL_TOOL_SCHEMAS\['refund_payment'\] is not a JSON Schema"
    ):
        check_tool_schemas()
    settings.HITL_TOOL_SCHEMAS = {"refund_payment": TOOL_SCHEMAS["refund_payment"]}
    check_tool_schemas()


def test_the_server_reads_the_schemas_file_at_start_up(tmp_path):
    path = tmp_path / "schemas.json"
    path.write_text(json.dumps({"deploy_service": TOOL_SCHEMAS["deploy_service"]}))
    script = "from django.conf import settings; print(sorted(settings.HITL_TOOL_SCHEMAS))"
    env = {
        **os.environ,
        "HITL_TOOL_SCHEMAS_FILE": str(path),
        "DJANGO_SETTINGS_MODULE": "eventbus_project.settings",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "['deploy_service']" in result.stdout


def test_a_schema_declaring_an_unknown_risk_stops_start_up_naming_the_tool(settings):
    settings.HITL_TOOL_SCHEMAS = {"delete_records": {"type": "object", "x-risk": "HIGH"}}
    with pytest.raises(
        ImproperlyConfigured, match=r"HITL_TOOL_SCHEMAS\['delete_records'\]\[\"x-risk\"\] must be"
    ):
        check_tool_schemas()
    settings.HITL_TOOL_SCHEMAS = {"delete_records": {"type": "object", "x-risk": "high"}}
    check_tool_schemas()
