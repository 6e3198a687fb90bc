"""Unit tests of the pure core: routing, authentication, header policy, bodies, upstreams."""

from __future__ import annotations

import json

import pytest

from iron_runtime import errors
from iron_runtime.errors import ApiShape
from iron_runtime.headers import client_response_fields, upstream_request_fields
from iron_runtime.keys import ProviderKeys, mask_secret
from iron_runtime.payload import model_of, parse_json_body
from iron_runtime.providers import Provider, default_upstream, detect_provider
from iron_runtime.routing import client_shape, route, split_provider_prefix, token_matches
from iron_runtime.upstreams import Upstream


def fields(**kw: str) -> list[tuple[bytes, bytes]]:
    return [(k.replace("_", "-").encode(), v.encode()) for k, v in kw.items()]


def as_dict(pairs) -> dict[str, str]:
    return {k.decode().lower(): v.decode() for k, v in pairs}


@pytest.mark.parametrize(
    "path, provider, rest",
    [
        ("/anthropic/v1/messages", Provider.ANTHROPIC, "/v1/messages"),
        ("/openai/v1/chat/completions?x=1", Provider.OPENAI, "/v1/chat/completions?x=1"),
        ("/anthropic", Provider.ANTHROPIC, "/"),
        ("/anthropic?beta=1", Provider.ANTHROPIC, "/?beta=1"),
        ("/anthropicfoo/v1/messages", None, "/anthropicfoo/v1/messages"),
        ("/v1/openai/x", None, "/v1/openai/x"),
    ],
)
def test_provider_prefix_is_a_whole_first_segment(path, provider, rest):
    assert split_provider_prefix(path) == (provider, rest)


@pytest.mark.parametrize(
    "method, path, model, provider, gateway, by",
    [
        ("POST", "/v1/chat/completions", "gpt-4o", Provider.OPENAI, False, "model"),
        ("POST", "/v1/chat/completions", "claude-sonnet-4-6", Provider.ANTHROPIC, True, "model"),
        ("POST", "/v1/messages", "claude-haiku-4-5", Provider.ANTHROPIC, False, "model"),
        ("POST", "/anthropic/v1/messages", "anything", Provider.ANTHROPIC, False, "prefix"),
        ("POST", "/openai/v1/chat/completions", "claude-x", Provider.OPENAI, False, "prefix"),
        ("POST", "/anthropic/v1/chat/completions", None, Provider.ANTHROPIC, True, "prefix"),
        ("GET", "/v1/models", None, Provider.OPENAI, False, "default"),
        ("POST", "/v1/embeddings", "text-embedding-3-small", Provider.OPENAI, False, "model"),
        ("POST", "/v1/v1/messages", "claude-haiku-4-5", Provider.ANTHROPIC, False, "model"),
    ],
)
def test_route(method, path, model, provider, gateway, by):
    r = route(method, path, {}, model)
    assert (r.provider, r.gateway, r.by) == (provider, gateway, by)
    assert not r.path.startswith("/v1/v1")


def test_route_path_drops_prefix_and_doubled_v1():
    assert route("POST", "/anthropic/v1/v1/messages", {}, None).path == "/v1/messages"
    assert (
        route("POST", "/v1/v1/messages?beta=true", {}, "claude-x").path == "/v1/messages?beta=true"
    )


def test_error_shape_follows_the_clients_api():
    assert client_shape("/v1/messages", {}) is ApiShape.ANTHROPIC
    assert client_shape("/anthropic/v1/models", {}) is ApiShape.ANTHROPIC
    assert client_shape("/v1/models", {"anthropic-version": "2023-06-01"}) is ApiShape.ANTHROPIC
    assert client_shape("/v1/chat/completions", {}) is ApiShape.OPENAI
    # a gateway request is an OpenAI client even under /anthropic
    assert route("POST", "/anthropic/v1/chat/completions", {}, None).shape is ApiShape.OPENAI


@pytest.mark.parametrize(
    "headers, ok",
    [
        ({"authorization": "Bearer tok"}, True),
        ({"authorization": "bearer tok"}, True),
        ({"x-api-key": "tok"}, True),
        ({"authorization": "Bearer wrong", "x-api-key": "tok"}, True),
        ({"authorization": "Bearer tok2"}, False),
        ({"authorization": "tok"}, False),
        ({"authorization": "Basic dG9r"}, False),
        ({"x-api-key": ""}, False),
        ({}, False),
        ({"authorization": "Bearer tökén"}, False),
    ],
)
def test_token_matches(headers, ok):
    assert token_matches(headers, "tok") is ok


def test_upstream_request_headers_for_openai():
    h = fields(
        Host="127.0.0.1:8080",
        Authorization="Bearer ic",
        x_api_key="ic",
        connection="keep-alive",
        OpenAI_Organization="org",
        user_agent="OpenAI/Python",
        x_iron_debug="1",
        cookie="c=1",
        Idempotency_Key="k1",
    )
    out = upstream_request_fields(h, Provider.OPENAI, "sk-real", "api.openai.com")
    assert as_dict(out) == {
        "host": "api.openai.com",
        "authorization": "Bearer sk-real",
        "openai-organization": "org",
        "user-agent": "OpenAI/Python",
        "idempotency-key": "k1",
    }
    assert out[1][0] == b"OpenAI-Organization"  # names keep the client's spelling


@pytest.mark.parametrize(
    "client_version, sent",
    [
        (None, "2023-06-01"),
        ("2026-10-21", "2026-10-21"),
        ("garbage", "2023-06-01"),
    ],
)
def test_upstream_request_headers_for_anthropic(client_version, sent):
    h = fields(authorization="Bearer ic", anthropic_beta="tools-2024")
    if client_version:
        h += fields(Anthropic_Version=client_version)
    out = upstream_request_fields(h, Provider.ANTHROPIC, "sk-ant-real", "api.anthropic.com")
    assert as_dict(out) == {
        "host": "api.anthropic.com",
        "x-api-key": "sk-ant-real",
        "anthropic-version": sent,
        "anthropic-beta": "tools-2024",
    }


def test_client_response_headers():
    resp = fields(Connection="close", keep_alive="5", x_request_id="r1")
    assert as_dict(client_response_fields(resp, "rid")) == {
        "x-request-id": "r1",
        "x-iron-request-id": "rid",
    }


def test_mask_secret_never_reveals_short_secrets():
    assert mask_secret("sk-proj-abcdefghijklmnop") == "sk-…mnop"
    assert mask_secret("short") == "…"
    assert mask_secret("") == ""


def test_provider_keys():
    keys = ProviderKeys.from_arguments("sk-ant-x", {"openai": "sk-o"})
    assert keys.get(Provider.ANTHROPIC) == "sk-ant-x"
    assert keys.providers() == [Provider.OPENAI, Provider.ANTHROPIC]
    assert "sk-ant-x" not in repr(keys)
    with pytest.raises(ValueError, match="unknown provider"):
        ProviderKeys.from_arguments(None, {"gemini": "k"})
    assert detect_provider("sk-ant-api03-x") is Provider.ANTHROPIC
    assert detect_provider("") is Provider.OPENAI


def test_json_body_parsing():
    assert parse_json_body(b"", "application/json") is None
    assert parse_json_body(b"--boundary", "multipart/form-data; boundary=x") is None
    assert parse_json_body(b'{"model": "m"}', "") == {"model": "m"}
    assert parse_json_body(b'{"a": 1}', "application/json; charset=utf-8") == {"a": 1}
    for raw in (b"{", b"\xff", b"[]", b"null"):
        with pytest.raises(errors.RouterError) as e:
            parse_json_body(raw, "application/json")
        assert e.value.status == 400
    assert model_of({"model": "gpt-4o"}) == "gpt-4o"
    assert model_of({}) is None
    with pytest.raises(errors.RouterError):
        model_of({"model": ["x"]})


def test_upstream_netloc():
    assert Upstream.parse("https://api.openai.com").netloc == "api.openai.com"
    assert Upstream.parse("http://127.0.0.1:9000").netloc == "127.0.0.1:9000"
    assert Upstream.parse("http://[::1]:9000").netloc == "[::1]:9000"


@pytest.mark.parametrize(
    "url, parsed",
    [
        ("https://api.openai.com", ("https", "api.openai.com", 443, "")),
        ("http://127.0.0.1:9000/v1", ("http", "127.0.0.1", 9000, "")),
        ("https://gw.example.com/openai/v1/", ("https", "gw.example.com", 443, "/openai")),
    ],
)
def test_upstream_parse(url, parsed):
    u = Upstream.parse(url)
    assert (u.scheme, u.host, u.port, u.base_path) == parsed


@pytest.mark.parametrize("url", ["ftp://x", "api.openai.com", "http://", "http://h:99999"])
def test_upstream_parse_refuses(url):
    with pytest.raises(ValueError):
        Upstream.parse(url)


def test_upstream_env_override(monkeypatch):
    monkeypatch.setenv("IRON_ANTHROPIC_BASE_URL", "http://127.0.0.1:1234")
    assert default_upstream(Provider.ANTHROPIC) == "http://127.0.0.1:1234"
    monkeypatch.delenv("IRON_OPENAI_BASE_URL", raising=False)
    assert default_upstream(Provider.OPENAI) == "https://api.openai.com"


def test_error_bodies_in_both_shapes():
    err = errors.bad_token()
    o = json.loads(err.body(ApiShape.OPENAI))
    assert o["error"]["code"] == "invalid_api_key" and o["error"]["type"] == "authentication_error"
    a = json.loads(err.body(ApiShape.ANTHROPIC))
    assert a == {"type": "error", "error": {"type": "authentication_error", "message": err.message}}
    a = json.loads(errors.key_unavailable(503, "m").body(ApiShape.ANTHROPIC))
    assert a["error"]["type"] == "iron_cage_key_unavailable"


def test_the_readme_error_table_is_the_errors_catalogue():
    import re
    from pathlib import Path

    from iron_runtime.errors import CATALOGUE

    readme = Path(__file__).resolve().parent.parent.joinpath("README.md").read_text()
    section = readme.split("## Errors", 1)[1].split("\n## ", 1)[0]
    rows = set()
    for line in section.splitlines():
        m = re.fullmatch(r"\| .* \| (\d{3}) \| `([a-z_]+)` / `([a-z_]+)` \|", line)
        if m:
            rows.add((int(m.group(1)), m.group(2), m.group(3)))
    assert rows == set(CATALOGUE)


def test_the_readme_option_table_is_the_settings_table():
    import re
    from pathlib import Path

    from iron_runtime.settings import SETTINGS

    readme = Path(__file__).resolve().parent.parent.joinpath("README.md").read_text()
    section = readme.split("## mitmdump and mitmweb", 1)[1].split("\n## ", 1)[0]
    listed: dict[str, str] = {}
    for line in section.splitlines():
        m = re.fullmatch(r"\| (`iron_\w+`(?:, `iron_\w+`)*) \|([^|]*)\|.*", line)
        if m:
            for name in re.findall(r"`(iron_\w+)`", m.group(1)):
                listed[name] = m.group(2).strip()
    assert set(listed) == {s.name for s in SETTINGS}
    for s in SETTINGS:  # plain defaults are shown as they are
        if isinstance(s.default, int) and not isinstance(s.default, bool):
            assert listed[s.name] == str(s.default), s.name


def test_every_router_error_is_built_in_the_errors_module():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    outside = [
        str(p.relative_to(root))
        for p in (root / "iron_runtime").rglob("*.py")
        if "RouterError(" in p.read_text() and p.name != "errors.py" and "testing" not in p.parts
    ]
    assert outside == []
