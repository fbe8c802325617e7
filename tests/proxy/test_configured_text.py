"""Every configured string is plain text: control characters, bidi overrides and absurd lengths are refused
by the one core validator of each field (so the CLI, the TUI's forms and rules files refuse the same), with a
message that names the character without printing it; and nothing refused is stored."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from regcache.proxy.config.client_config import check_address
from regcache.proxy.config.control import ControlPlane
from regcache.proxy.core.catalogue import UpstreamCatalogue, normalize_base_url, normalize_login_server
from regcache.proxy.core.errors import ValidationError
from regcache.proxy.core.models import AuthPolicy, CredentialSet
from regcache.proxy.core.rules import check_credentials, check_name, parse_source, parse_target
from regcache.proxy.core.secret_ids import SecretId
from regcache.proxy.core.settings import make_s3_storage
from regcache.proxy.core.tagfilter import TagFilter
from regcache.proxy.core.text import check_printable, printable, unsafe_character
from regcache.proxy.core.tokens import parse_expiry, parse_repositories
from regcache.proxy.core.units import parse_duration, parse_size
from tests.helpers.state import dump_database

CATALOGUE = UpstreamCatalogue()
GH_CREDS = {"ghcreds": CredentialSet("ghcreds", "ghcr.io", "env://GH_USER", "env://GH_TOKEN")}

#: what an attacker would slip into a configured string, by name
HOSTILE = {
    "ESC": "\x1b[31m", "BEL": "\x07", "NUL": "\x00", "TAB": "\t", "CR": "\r", "LF": "\n", "DEL": "\x7f",
    "CSI (C1)": "\x9b", "NEL (C1)": "\x85", "RLO": "\u202e", "LRE": "\u202a", "PDF": "\u202c", "LRI": "\u2066",
    "PDI": "\u2069", "title": "\x1b]0;pwned\x07",
}

#: field -> a function that gives its validator a value with ``h`` inside an otherwise valid one
FIELDS: dict[str, Callable[[str], object]] = {
    "cache rule name": lambda h: check_name(f"my{h}rule"),
    "credential set name": lambda h: check_name(f"hub{h}creds", "credential set"),
    "token name": lambda h: check_name(f"ci{h}token", "token"),
    "upstream login server": lambda h: normalize_login_server(f"registry{h}.example"),
    "upstream URL": lambda h: normalize_base_url(f"https://registry{h}.example"),
    "rule source": lambda h: parse_source(f"ghcr.io/acme/a{h}pp", CATALOGUE),
    "rule target": lambda h: parse_target(f"te{h}am/*"),
    "rule credential set": lambda h: check_credentials("ghcr.io", f"gh{h}creds", GH_CREDS, CATALOGUE),
    "tag filter": lambda h: TagFilter.parse(f"^3{h}\\."),
    "username secret id": lambda h: SecretId.parse(f"keyring://regcache/us{h}er", field="username_secret_id"),
    "password secret id": lambda h: SecretId.parse(f"env://HUB{h}TOKEN", field="password_secret_id"),
    "token repository pattern": lambda h: parse_repositories([f"te{h}am/*"]),
    "token expiry": lambda h: parse_expiry(f"30{h}d"),
    "size setting": lambda h: parse_size(f"50{h}GiB", "value"),
    "duration setting": lambda h: parse_duration(f"6{h}0s", "value"),
    "auth policy": lambda h: AuthPolicy.parse(f"bo{h}th"),
    "storage endpoint": lambda h: make_s3_storage(f"https://s3{h}.example", "bucket", "env://A", "env://B"),
    "storage bucket": lambda h: make_s3_storage("https://s3.example", f"buck{h}et", "env://A", "env://B"),
    "storage prefix": lambda h: make_s3_storage("https://s3.example", "bucket", "env://A", "env://B",
                                                prefix=f"re{h}gcache"),
    "storage region": lambda h: make_s3_storage("https://s3.example", "bucket", "env://A", "env://B",
                                                region=f"us{h}-east-1"),
    "storage secret id": lambda h: make_s3_storage("https://s3.example", "bucket", f"env://A{h}B", "env://B"),
    "client-config address": lambda h: check_address(f"cache{h}.example:5000"),
}


@pytest.mark.parametrize("hostile", list(HOSTILE.values()), ids=list(HOSTILE))
@pytest.mark.parametrize("field", list(FIELDS))
def test_a_control_character_is_refused_by_name_never_printed(field, hostile):
    with pytest.raises(ValidationError) as info:
        FIELDS[field](hostile)
    message = str(info.value)
    assert f"U+{ord(hostile[0]):04X}" in message  # the character is named...
    assert unsafe_character(message) is None  # ...and never printed


@pytest.mark.parametrize("field", list(FIELDS))
def test_a_100kb_value_is_refused_with_a_short_message(field):
    with pytest.raises(ValidationError) as info:
        FIELDS[field]("a" * 100_000)
    assert len(str(info.value)) < 400


@pytest.mark.parametrize("field", list(FIELDS))
def test_the_value_around_the_hostile_part_is_valid(field):
    """Only the hostile part is refused: without it, each value passes its validator."""
    FIELDS[field]("")


@pytest.mark.parametrize("url", ["http://a[b]c", "https://[registry].example", "http://ab c", "http://a b/",
                                 "https://reg_istry.example", "https://", "https://:5000"])
def test_urls_that_are_no_host_are_refused_clearly(url):
    with pytest.raises(ValidationError) as info:
        normalize_base_url(url)
    assert info.value.field == "url"


@pytest.mark.parametrize("url", ["http://127.0.0.1:5999", "harbor.local:8443", "https://[::1]:5000",
                                 "HTTPS://Registry.Example/"])
def test_registry_roots_stay_accepted(url):
    assert normalize_base_url(url).startswith(("http://", "https://"))


@pytest.mark.parametrize("text", ["9" * 400, "1e400", "99999999999999999999999PiB"])
def test_sizes_and_durations_too_large_to_mean_anything_are_refused(text):
    with pytest.raises(ValidationError):
        parse_size(text)
    with pytest.raises(ValidationError):
        parse_duration(text.removesuffix("PiB"))


def test_printable_escapes_what_check_printable_refuses():
    for name, hostile in HOSTILE.items():
        shown = printable(f"a{hostile}b")
        assert unsafe_character(shown) is None, name
        assert shown.startswith("a\\") and shown.endswith("b")
    assert printable("line one\nline \x1b two", keep_newlines=True) == "line one\nline \\x1b two"
    assert printable("[bold]markup[/bold] stays text") == "[bold]markup[/bold] stays text"
    assert check_printable("ünïcödé and [brackets]", "x") == "ünïcödé and [brackets]"


# -- through the control plane: refused, and nothing stored -----------------------------------------------

CONTROL_CALLS: dict[str, Callable[[ControlPlane, str], object]] = {
    "upstream login server": lambda c, h: c.add_upstream(f"reg{h}istry.example", "https://registry.example"),
    "upstream URL": lambda c, h: c.add_upstream("registry.example", f"https://registry.example{h}"),
    "upstream auth policy": lambda c, h: c.add_upstream("registry.example", "https://registry.example", f"bo{h}th"),
    "credential set name": lambda c, h: c.create_credential_set(f"hub{h}creds", "ghcr.io", "env://U", "env://P"),
    "credential set username id": lambda c, h: c.create_credential_set("hub-creds", "ghcr.io", f"env://U{h}",
                                                                       "env://P"),
    "credential set password id": lambda c, h: c.create_credential_set("hub-creds", "ghcr.io", "env://U",
                                                                       f"keyring://regcache/p{h}"),
    "rule name": lambda c, h: c.create_rule(f"my{h}rule", "ghcr.io/acme/app", "app"),
    "rule source": lambda c, h: c.create_rule("my-rule", f"ghcr.io/acme/a{h}pp", "app"),
    "rule target": lambda c, h: c.create_rule("my-rule", "ghcr.io/acme/app", f"a{h}pp"),
    "rule tag filter": lambda c, h: c.create_rule("my-rule", "ghcr.io/acme/app", "app", sync_tags=f"^1{h}"),
    "token name": lambda c, h: c.create_token(f"ci{h}token", ["app"]),
    "token repository": lambda c, h: c.create_token("ci-token", [f"a{h}pp"]),
    "token expiry": lambda c, h: c.create_token("ci-token", ["app"], f"30d{h}"),
    "setting key": lambda c, h: c.set_setting(f"max-size{h}", "1GiB"),
    "setting value": lambda c, h: c.set_setting("max-size", f"1GiB{h}"),
    "lookup by name": lambda c, h: c.get_rule(f"my{h}rule"),
}


@pytest.fixture
def control(home, keyring_env):
    control = ControlPlane.open(home)
    yield control
    control.close()


@pytest.mark.parametrize("hostile", ["\x1b[2J", "\u202e", "\n"], ids=["ESC", "RLO", "LF"])
@pytest.mark.parametrize("call", list(CONTROL_CALLS))
def test_the_control_plane_refuses_and_stores_nothing(control, home, call, hostile):
    before = dump_database(home)
    with pytest.raises(ValidationError, match="control character"):
        CONTROL_CALLS[call](control, hostile)
    assert dump_database(home) == before
