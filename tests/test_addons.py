"""Addon tests with mitmproxy's own helpers (no sockets)."""

from __future__ import annotations

import json

import pytest
from mitmproxy import exceptions
from mitmproxy.net.http import http1
from mitmproxy.test import taddons, tflow, tutils

from iron_runtime.addons import router as router_module
from iron_runtime.addons.admin import Admin
from iron_runtime.addons.egress import EGRESS
from iron_runtime.addons.router import Router


def _request(path="/v1/chat/completions", token="direct", body=None):
    flow = tflow.tflow()
    flow.request = tutils.treq(
        method=b"POST",
        path=path.encode(),
        host="127.0.0.1",
        port=8080,
        scheme=b"http",
        content=json.dumps(body or {"model": "gpt-4o", "messages": []}).encode(),
    )
    flow.request.headers.clear()
    flow.request.headers["authorization"] = f"Bearer {token}"
    flow.request.headers["content-type"] = "application/json"
    return flow


def test_an_exception_inside_the_router_answers_500_and_forwards_nothing(monkeypatch):
    r = Router()
    with taddons.context(r) as tctx:
        tctx.configure(
            r, iron_openai_key="sk-real-openai-key-1234", iron_openai_upstream="http://127.0.0.1:9"
        )

        def boom(*a, **kw):
            raise RuntimeError("bug")

        monkeypatch.setattr(router_module.routing, "route", boom)
        flow = _request()
        r.request(flow)
        assert flow.response.status_code == 500
        assert json.loads(flow.response.content)["error"]["code"] == "internal_error"
        # neither upgraded to the real key nor keeping the agent's token in the stored flow
        assert flow.request.headers["authorization"] == "Bearer …"


def test_routed_request_never_holds_the_key_which_goes_on_the_wire_only():
    r = Router()
    with taddons.context(r) as tctx:
        tctx.configure(
            r,
            iron_openai_key="sk-real-openai-key-1234",
            iron_openai_upstream="https://api.example.test:8443/base",
        )
        flow = _request()
        r.request(flow)
        assert flow.response is None
        assert flow.request.url == "https://api.example.test:8443/base/v1/chat/completions"
        assert flow.request.headers["authorization"] == "Bearer sk-…1234"
        assert "sk-real-openai-key-1234" not in str(flow.get_state())
        assert flow.metadata["iron"]["provider"] == "openai"
        wire = EGRESS.on_the_wire(http1.assemble_request_head(flow.request))
        assert b"\r\nauthorization: Bearer sk-real-openai-key-1234\r\n" in wire
        flow.response = tutils.tresp()
        r.responseheaders(flow)
        assert flow.response.headers["x-iron-request-id"] == flow.metadata["iron"]["request_id"]


def test_egress_rewrites_only_whole_credential_values_it_issued():
    ph = EGRESS.placeholder("sk-ant-real-key-987654")
    head = (
        b"POST /v1/messages HTTP/1.1\r\nx-api-key: %s\r\nuser-agent: %s\r\n"
        b"authorization: Bearer %s-x\r\n\r\n" % (ph.encode(), ph.encode(), ph.encode())
    )
    wire = EGRESS.on_the_wire(head)
    assert b"x-api-key: sk-ant-real-key-987654\r\n" in wire
    assert b"user-agent: " + ph.encode() in wire  # other headers are never rewritten
    assert b"Bearer " + ph.encode() + b"-x" in wire  # nor values that merely contain it
    assert EGRESS.placeholder("sk-ant-other-key-987654") != ph  # same mask, distinct keys


def test_failed_upstream_flow_never_held_the_key():
    r = Router()
    with taddons.context(r) as tctx:
        tctx.configure(r, iron_anthropic_key="sk-ant-real-key-987654")
        flow = _request(path="/v1/messages", body={"model": "claude-haiku-4-5"})
        r.request(flow)
        assert flow.request.headers["x-api-key"] == "sk-…7654"
        flow.error = tflow.terr()
        r.error(flow)
        assert "sk-ant-real-key-987654" not in str(flow.request.headers)


def test_connect_requests_are_refused():
    r = Router()
    with taddons.context(r):
        flow = tflow.tflow()
        flow.request.method = "CONNECT"
        r.http_connect(flow)
        assert flow.response.status_code == 405


def test_options_are_validated():
    r = Router()
    with taddons.context(r) as tctx:
        with pytest.raises(exceptions.OptionsError, match="upstream URL"):
            tctx.configure(r, iron_openai_upstream="not a url")
        with pytest.raises(exceptions.OptionsError, match="positive"):
            tctx.configure(r, iron_body_limit=0)
        with pytest.raises(exceptions.OptionsError, match="IRON_TEST_UNSET"):
            tctx.configure(r, iron_provider_key="env:IRON_TEST_UNSET")
        with pytest.raises(exceptions.OptionsError, match="default token"):
            tctx.configure(r, listen_host="0.0.0.0")
        tctx.configure(r, listen_host="0.0.0.0", iron_token="a-real-secret")


def test_admin_without_secret_is_404():
    a = Admin()
    with taddons.context(a) as tctx:
        tctx.configure(a, iron_admin_secret="s3cret")
        flow = _request(path="/_iron/status")
        flow.request.method = "GET"
        a.request(flow)
        assert flow.response.status_code == 404
        flow = _request(path="/_iron/status")
        flow.request.method = "GET"
        flow.request.headers["x-iron-admin-secret"] = "s3cret"
        a.request(flow)
        assert flow.response.status_code == 200
        assert "pid" in json.loads(flow.response.content)
