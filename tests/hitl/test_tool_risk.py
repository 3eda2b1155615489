"""HITL_TOOL_RISK: tool name or glob -> risk level, read through hitl.conf, refused clearly when wrong."""

import pytest
from django.core.exceptions import ImproperlyConfigured

from hitl.conf import hitl_settings, parse_tool_risk, tool_risk

RULES = {"delete_*": "high", "delete_draft": "low", "send_?mail": "medium", "*_prod": "high"}


def test_a_tools_own_entry_wins_then_the_first_matching_glob():
    rules = parse_tool_risk(RULES)
    assert tool_risk("delete_draft", rules) == "low"  # its own name, though delete_* comes first
    assert tool_risk("delete_records", rules) == "high"
    assert tool_risk("send_email", rules) == "medium"
    assert tool_risk("deploy_prod", rules) == "high"
    assert tool_risk("read_file", rules) is None  # not named: no level, no badge
    assert tool_risk("Delete_records", rules) is None  # as written: case counts


def test_the_setting_is_read_through_the_accessor(settings):
    settings.HITL_TOOL_RISK = {"delete_records": "high"}
    assert hitl_settings().tool_risk == (("delete_records", "high"),)
    assert tool_risk("delete_records") == "high"
    del settings.HITL_TOOL_RISK
    assert hitl_settings().tool_risk == ()
    assert tool_risk("delete_records") is None


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (["delete_*"], "must be a dict"),
        ({"delete_*": "HIGH"}, """['delete_*'] must be "low", "medium" or "high", not 'HIGH'"""),
        ({"delete_*": 3}, "not 3"),
        ({"": "high"}, "'' is not a tool name or glob"),
        ({7: "high"}, "7 is not a tool name or glob"),
    ],
)
def test_a_bad_value_stops_the_server_naming_the_entry(settings, value, says):
    settings.HITL_TOOL_RISK = value
    with pytest.raises(ImproperlyConfigured) as raised:
        hitl_settings()
    assert says in str(raised.value)
    assert "HITL_TOOL_RISK" in str(raised.value)


# A tool's schema may declare its risk with a top-level "x-risk"; HITL_TOOL_RISK still wins.


@pytest.fixture
def registered():
    from hitl.conf import unregister_tool_schema

    names: list[str] = []
    yield names
    for name in names:
        unregister_tool_schema(name)


def test_a_registered_schemas_x_risk_rates_a_tool_the_setting_does_not_name(settings, registered):
    from hitl.conf import register_tool_schema

    settings.HITL_TOOL_RISK = {"drop_*": "medium"}
    register_tool_schema("wipe_disk", {"type": "object", "x-risk": "high"})
    register_tool_schema("read_file", {"type": "object"})
    registered.extend(["wipe_disk", "read_file"])
    assert tool_risk("wipe_disk") == "high"
    assert tool_risk("read_file") is None  # a schema without x-risk says nothing
    assert tool_risk("unknown_tool") is None


def test_the_setting_wins_over_the_schemas_x_risk(settings, registered):
    from hitl.conf import register_tool_schema

    register_tool_schema("drop_table", {"type": "object", "x-risk": "low"})
    register_tool_schema("drop_index", {"type": "object", "x-risk": "low"})
    registered.extend(["drop_table", "drop_index"])
    settings.HITL_TOOL_RISK = {"drop_table": "high", "drop_*": "medium"}
    assert tool_risk("drop_table") == "high"  # its own entry
    assert tool_risk("drop_index") == "medium"  # a glob of the setting, too, beats the schema
    del settings.HITL_TOOL_RISK
    assert tool_risk("drop_table") == "low"


def test_a_configured_schemas_x_risk_counts_too(settings):
    settings.HITL_TOOL_SCHEMAS = {"deploy_prod": {"type": "object", "x-risk": "medium"}}
    assert tool_risk("deploy_prod") == "medium"
    settings.HITL_TOOL_SCHEMAS = {"deploy_prod": {"type": "object", "x-risk": "HIGH"}}
    assert tool_risk("deploy_prod") is None  # not a level: ignored (register_tool_schema refuses it)


def test_registering_a_schema_with_a_wrong_x_risk_is_refused(registered):
    from hitl.conf import register_tool_schema, tool_schema

    with pytest.raises(
        ValueError, match=r'wipe_disk: "x-risk" must be "low", "medium" or "high", not \'severe\''
    ):
        register_tool_schema("wipe_disk", {"type": "object", "x-risk": "severe"})
    assert tool_schema("wipe_disk") is None


@pytest.mark.django_db
def test_an_approval_request_as_json_carries_its_risk(settings, registered):
    from hitl.conf import register_tool_schema
    from hitl.selectors import approval_as_dict
    from hitl.services import approval_request

    settings.HITL_TOOL_RISK = {"delete_*": "high"}
    register_tool_schema("wipe_disk", {"type": "object", "x-risk": "medium"})
    registered.append("wipe_disk")
    rated = {
        tool: approval_as_dict(
            approval_request(call_id=f"c-{tool}", session_id="s", tool_name=tool, arguments={}, reason="")[0]
        )["risk"]
        for tool in ("delete_records", "wipe_disk", "read_file")
    }
    assert rated == {"delete_records": "high", "wipe_disk": "medium", "read_file": None}
