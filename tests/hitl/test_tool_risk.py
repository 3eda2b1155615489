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
