"""One grammar for cache-rule settings, whichever face gives them (CLI options, the TUI form, a rules file)."""

from __future__ import annotations

import pytest

from regcache.proxy.core.errors import ValidationError
from regcache.proxy.core.settings import parse_rule_settings


@pytest.mark.parametrize(("given", "expected"), [
    ({}, {}),
    ({"freshness": "10m"}, {"freshness": 600.0}),
    ({"freshness": ""}, {"freshness": 0.0}),  # an emptied form field: always revalidate
    ({"retention": "30d"}, {"retention": 30 * 86400.0}),
    ({"retention": "none"}, {"retention": None}),
    ({"retention": "OFF"}, {"retention": None}),
    ({"retention": ""}, {"retention": None}),
    ({"sync_tags": "semver:>=1.2"}, {"sync_tags": "semver:>=1.2"}),
    ({"sync_tags": " none "}, {"sync_tags": None}),
    ({"sync_interval": "1h", "sync_tags": "^3\\."}, {"sync_interval": 3600.0, "sync_tags": "^3\\."}),
    ({"sync_interval": 600}, {"sync_interval": 600.0}),  # a YAML number is seconds
    ({"serve_stale_on_error": False, "serve_stale_if_deleted": True},
     {"serve_stale_on_error": False, "serve_stale_if_deleted": True}),
])
def test_settings_parse_the_same_for_every_face(given, expected):
    assert parse_rule_settings(given) == expected


@pytest.mark.parametrize(("given", "field"), [
    ({"freshness": "soon"}, "freshness"),
    ({"retention": "-1d"}, "retention"),
    ({"sync_interval": "1 fortnight"}, "sync_interval"),
    ({"serve_stale_on_error": "yes"}, "serve_stale_on_error"),
])
def test_a_bad_value_names_its_field(given, field):
    with pytest.raises(ValidationError) as info:
        parse_rule_settings(given)
    assert info.value.field == field


def test_an_unknown_setting_is_refused():
    with pytest.raises(ValidationError, match="unknown cache-rule settings: colour"):
        parse_rule_settings({"colour": "blue"})
