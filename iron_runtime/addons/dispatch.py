"""mitmproxy's event dispatch with each event's handlers looked up once, for a fixed chain.

For every event of every flow, mitmproxy walks its whole addon chain: per addon a generator,
a ``getattr``, a context manager and a ``dataclasses.fields()`` call, and then it walks the
chain again for an ``update`` event that no addon of the router process handles. That walk
is about a sixth of the router's CPU per request. In the router process (``LlmRouter``,
``iron-runtime serve``) the chain is built once and never changes (no scripts that reload),
so ``install(master)`` gives its addon manager a table: the handlers of each event, looked
up at the event's first occurrence, grouped by chain entry. They are called with
mitmproxy's own rules: in chain order, an awaitable awaited before the next handler runs,
an exception logged as mitmproxy logs it ("Addon error: ...") and the rest of that chain
entry skipped, ``AddonHalt`` ending the event, ``OptionsError`` raised. Adding, removing
or clearing addons empties the table. What the table cannot see, and the router process
never does: a handler set on an addon after its event first ran, a child added to an
addon's ``addons`` list in place, an addon added by a handler of the event under way (it
gets the next events). ``mitmdump -s`` and ``mitmweb -s``, whose script addons can reload,
keep mitmproxy's own dispatch.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import types
from collections.abc import Callable
from typing import Any

from mitmproxy import exceptions, flow, hooks
from mitmproxy.addonmanager import AddonManager, traverse

logger = logging.getLogger("mitmproxy.addonmanager")  # where mitmproxy logs addon errors

Handlers = tuple[tuple[Callable[..., Any], ...], ...]  # per chain entry, its handlers in order

_arg_names: dict[type, tuple[str, ...]] = {}


def hook_args(hook: hooks.Hook) -> list[Any]:
    """``Hook.args()`` with the field names of each hook class looked up once."""
    cls = type(hook)
    names = _arg_names.get(cls)
    if names is None:
        names = _arg_names[cls] = tuple(f.name for f in dataclasses.fields(hook))  # type: ignore[arg-type]
    return [getattr(hook, n) for n in names]


def _raising(error: Exception) -> Callable[..., Any]:
    def fail(*_: Any) -> None:
        raise error

    return fail


class HookTable:
    """The handlers of each event in a fixed addon chain, and their dispatch."""

    def __init__(self, manager: AddonManager) -> None:
        self.manager = manager
        self._handlers: dict[str, Handlers] = {}

    def clear(self) -> None:
        self._handlers.clear()

    def handlers(self, name: str) -> Handlers:
        found = self._handlers.get(name)
        if found is None:
            found, settled = self._lookup(name)
            if settled:
                self._handlers[name] = found
        return found

    def _lookup(self, name: str) -> tuple[Handlers, bool]:
        """What ``AddonManager._iter_hooks`` finds for ``name``, for each chain entry, and
        whether it may be kept (not when looking a handler up raised: mitmproxy logs that
        error each time and looks again next time, and so does this)."""
        per_entry = []
        settled = True
        for entry in self.manager.chain:
            funcs = []
            try:
                for addon in traverse([entry]):
                    func = getattr(addon, name, None)
                    if not func or isinstance(func, types.ModuleType):
                        continue  # a module imported under a hook's name is not a handler
                    if not callable(func):
                        func = _raising(
                            exceptions.AddonManagerError(
                                f"Addon handler {name} ({addon}) not callable"
                            )
                        )
                    funcs.append(func)
            except Exception as e:  # a property that raises, say: the rest of this entry
                funcs.append(_raising(e))
                settled = False
            if funcs:
                per_entry.append(tuple(funcs))
        return tuple(per_entry), settled

    async def trigger_event(self, event: hooks.Hook, args: list[Any] | None = None) -> None:
        handlers = self.handlers(event.name)
        if not handlers:
            return
        if args is None:
            args = hook_args(event)
        for funcs in handlers:
            try:
                for func in funcs:
                    result = func(*args)
                    if result is not None and inspect.isawaitable(result):
                        await result
            except exceptions.AddonHalt:
                return
            except exceptions.OptionsError:
                raise
            except Exception as e:
                logger.error(f"Addon error: {e}", exc_info=True)

    async def handle_lifecycle(self, event: hooks.Hook) -> None:
        args = hook_args(event)
        message = args[0]
        await self.trigger_event(event, args)
        if isinstance(message, flow.Flow) and self.handlers(hooks.UpdateHook.name):
            await self.trigger_event(hooks.UpdateHook([message]))


def install(manager: AddonManager) -> HookTable:
    """Give this addon manager (of a chain that scripts never change) a hook table; the
    table is emptied whenever an addon is added, removed or cleared."""
    table = HookTable(manager)

    def emptying(method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return method(*args, **kwargs)
            finally:
                table.clear()

        return call

    for name in ("register", "add", "remove", "clear"):
        setattr(manager, name, emptying(getattr(manager, name)))
    setattr(hooks.Hook, "args", hook_args)  # noqa: B010 - a patch, the same list
    setattr(manager, "trigger_event", table.trigger_event)  # noqa: B010 - a patch
    setattr(manager, "handle_lifecycle", table.handle_lifecycle)  # noqa: B010 - a patch
    return table
