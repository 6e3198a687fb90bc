"""The router process's hook table (``addons/dispatch.py``) dispatches exactly as mitmproxy's
own addon manager does: the same handlers, in the same order, with the same error rules.
Each scenario runs through an unpatched master and a patched one and the records compare."""

from __future__ import annotations

import asyncio
import logging
import re
import types
from typing import Any

import pytest
from mitmproxy import exceptions, hooks, http
from mitmproxy.master import Master
from mitmproxy.options import Options
from mitmproxy.proxy import server_hooks
from mitmproxy.proxy.layers import http as http_layer
from mitmproxy.test import tflow

from iron_runtime.addons import dispatch


class Recording:
    def __init__(self, name: str, calls: list[str]) -> None:
        self.name = name
        self.calls = calls


class Plain(Recording):
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self.calls.append(f"{self.name}.requestheaders")

    async def request(self, flow: http.HTTPFlow) -> None:
        await asyncio.sleep(0)
        self.calls.append(f"{self.name}.request")

    def response(self, flow: http.HTTPFlow) -> Any:
        async def later() -> None:
            await asyncio.sleep(0)
            self.calls.append(f"{self.name}.response")

        return later()  # an awaitable from a plain method: awaited before the next one


class Failing(Recording):
    def request(self, flow: http.HTTPFlow) -> None:
        self.calls.append(f"{self.name}.request")
        raise ValueError("boom in request")


class Halting(Recording):
    def response(self, flow: http.HTTPFlow) -> None:
        self.calls.append(f"{self.name}.response")
        raise exceptions.AddonHalt()


class Odd(Recording):
    error = types.ModuleType("error")  # a module imported under a hook's name: not a handler
    responseheaders = 5  # not callable: an error each time

    def client_connected(self, client: Any) -> None:
        self.calls.append(f"{self.name}.client_connected")


class LookupFails(Recording):
    armed = False  # registering looks every attribute up (for commands): armed after that

    @property
    def request(self) -> Any:  # looking the handler up raises, each time
        if not self.armed:
            return None
        self.calls.append(f"{self.name}.request looked up")
        raise RuntimeError("lookup boom")

    def response(self, flow: http.HTTPFlow) -> None:
        self.calls.append(f"{self.name}.response")


class Updating(Recording):
    def update(self, flows: list) -> None:
        self.calls.append(f"{self.name}.update({len(flows)})")


class Group:
    def __init__(self, name: str, *children: Any) -> None:
        self.name = name
        self.addons = list(children)


def chain(calls: list[str], with_update: bool) -> list[Any]:
    entries: list[Any] = [
        Plain("a", calls),
        Group("g1", Failing("b", calls), Plain("c", calls)),  # c never runs after b fails
        Group("g2", Plain("d", calls), Group("g3", Plain("e", calls))),
        Odd("f", calls),
        Group("g4", LookupFails("l", calls), Plain("m", calls)),  # m.request never runs
        Halting("h", calls),
        Plain("i", calls),  # after h's AddonHalt, no response for i
    ]
    if with_update:
        entries.append(Updating("u", calls))
    return entries


async def run_scenario(patched: bool, with_update: bool, caplog: Any) -> tuple[list, list]:
    caplog.clear()
    master = Master(Options(), event_loop=asyncio.get_running_loop())
    calls: list[str] = []
    master.addons.add(*chain(calls, with_update))
    LookupFails.armed = True
    if patched:
        dispatch.install(master.addons)
    f = tflow.tflow(resp=True)
    client = f.client_conn
    try:
        return await dispatch_all(master, f, client, calls, caplog)
    finally:
        LookupFails.armed = False


async def dispatch_all(master: Master, f: Any, client: Any, calls: list, caplog: Any) -> tuple:
    for event in (
        server_hooks.ClientConnectedHook(client),
        http_layer.HttpRequestHeadersHook(f),
        http_layer.HttpRequestHook(f),
        http_layer.HttpRequestHook(f),  # twice: a failed look-up is tried again
        http_layer.HttpResponseHeadersHook(f),
        http_layer.HttpResponseHook(f),
        http_layer.HttpErrorHook(f),
    ):
        await master.addons.handle_lifecycle(event)
    errors = [
        re.sub(r" at 0x[0-9a-f]+", "", r.getMessage())
        for r in caplog.records
        if r.levelno >= logging.ERROR and r.name == "mitmproxy.addonmanager"
    ]
    return calls, errors


@pytest.mark.parametrize("with_update", [False, True])
def test_patched_dispatch_calls_what_mitmproxy_calls(caplog, with_update) -> None:
    async def both() -> tuple[Any, Any]:
        return (
            await run_scenario(False, with_update, caplog),
            await run_scenario(True, with_update, caplog),
        )

    (calls, errors), (patched_calls, patched_errors) = asyncio.run(both())

    def handled(log: list[str]) -> list[str]:  # look-ups come first in a table: not ordered
        return [c for c in log if not c.endswith("looked up")]

    assert handled(patched_calls) == handled(calls)
    assert patched_calls.count("l.request looked up") == calls.count("l.request looked up")
    assert patched_errors == errors
    # and the scenario exercises what it claims
    assert "c.request" not in calls and "b.request" in calls and "d.request" in calls
    assert "h.response" in calls and "i.response" not in calls
    assert "Addon error: boom in request" in errors
    assert "Addon error: lookup boom" in errors and "m.request" not in calls
    assert calls.count("l.request looked up") == 2
    assert "l.response" in calls and "m.response" in calls
    assert any("not callable" in e for e in errors)
    if with_update:
        assert calls.count("u.update(1)") == 6  # after each flow event, not the client's


def test_options_error_propagates_as_in_mitmproxy() -> None:
    class Strict:
        def request(self, flow: http.HTTPFlow) -> None:
            raise exceptions.OptionsError("bad option")

    async def go() -> None:
        master = Master(Options(), event_loop=asyncio.get_running_loop())
        master.addons.add(Strict())
        dispatch.install(master.addons)
        with pytest.raises(exceptions.OptionsError):
            await master.addons.trigger_event(http_layer.HttpRequestHook(tflow.tflow()))

    asyncio.run(go())


def test_adding_or_removing_an_addon_empties_the_table() -> None:
    async def go() -> list[str]:
        master = Master(Options(), event_loop=asyncio.get_running_loop())
        calls: list[str] = []
        first = Plain("a", calls)
        master.addons.add(first)
        dispatch.install(master.addons)
        f = tflow.tflow()
        await master.addons.trigger_event(http_layer.HttpRequestHeadersHook(f))
        master.addons.add(Plain("late", calls))
        await master.addons.trigger_event(http_layer.HttpRequestHeadersHook(f))
        master.addons.remove(first)
        await master.addons.trigger_event(http_layer.HttpRequestHeadersHook(f))
        return calls

    assert asyncio.run(go()) == [
        "a.requestheaders",
        "a.requestheaders",
        "late.requestheaders",
        "late.requestheaders",
    ]


def test_hook_args_are_the_dataclass_fields_in_order() -> None:
    f = tflow.tflow()
    for hook in (http_layer.HttpRequestHook(f), hooks.UpdateHook([f]), hooks.ConfigureHook({"x"})):
        assert dispatch.hook_args(hook) == [getattr(hook, n) for n in hook.__dataclass_fields__]
