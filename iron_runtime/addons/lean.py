"""mitmproxy without its debug-mode type checks, and without the addons the router never loads.

Unless Python runs with ``-O``, mitmproxy checks the type of every field of each request and
response it builds (``MessageData.__post_init__``, under ``if __debug__``): a debugging aid
for addon authors that costs about a tenth of the proxy's CPU per request. ``install()``
makes that check a no-op, once per process, which is what ``python -O`` would do for it
without disabling ``assert`` or needing bytecode compiled for ``-O``.

Importing any one of mitmproxy's addons runs ``mitmproxy/addons/__init__.py``, which imports
all thirty-odd of them, and with them Flask and Jinja (the onboarding app), ldap3 and pyasn1
(proxy authentication), click and more: about 13 MB of a process that uses five of them
(``core``, ``next_layer``, ``proxyserver`` and ``tlsconfig``, and ``termlog``, which
mitmproxy's master imports).
``import_addons_on_demand()``, called in the router process before mitmproxy is imported,
registers that package without running its ``__init__``: each addon module is imported when
something imports it, and the first look-up of anything else the package defines (such as
``default_addons``) runs the ``__init__`` then, so nothing that needs it goes without.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types
from typing import Any

PACKAGE = "mitmproxy.addons"


def _unchecked(self: Any) -> None:
    """The fields are set by mitmproxy's own parsers and ``Request``/``Response.make``."""


def install() -> None:
    """Skip mitmproxy's debug-mode field type checks (once per process)."""
    from mitmproxy import http

    if getattr(http.MessageData, "__post_init__", None) not in (None, _unchecked):
        setattr(http.MessageData, "__post_init__", _unchecked)  # noqa: B010 - a patch


_init_lock = threading.RLock()


class _OnDemand(types.ModuleType):
    """``mitmproxy.addons`` before its ``__init__`` has run (see the module docstring)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or "." in name:
            raise AttributeError(name)
        try:
            submodule = importlib.util.find_spec(f"{PACKAGE}.{name}") is not None
        except (ImportError, ValueError):
            submodule = False
        if submodule:
            return importlib.import_module(f"{PACKAGE}.{name}")  # an addon module: just it
        with _init_lock:  # one thread runs the __init__; the others wait for it
            if not self.__dict__.get("_initialised"):
                self.__dict__["_initialised"] = True
                spec = self.__spec__
                assert spec is not None and spec.loader is not None
                try:
                    spec.loader.exec_module(self)  # the package's own __init__, in here
                except BaseException:
                    self.__dict__["_initialised"] = False  # the next look-up meets it again
                    raise
        try:
            return self.__dict__[name]
        except KeyError:
            raise AttributeError(f"module {PACKAGE!r} has no attribute {name!r}") from None


def import_addons_on_demand() -> bool:
    """Register ``mitmproxy.addons`` so that its submodules import alone; False if it was
    already imported (then nothing changes)."""
    if PACKAGE in sys.modules:
        return False
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.submodule_search_locations is None:
        return False
    module = _OnDemand(PACKAGE)
    module.__spec__ = spec
    module.__path__ = list(spec.submodule_search_locations)
    module.__file__ = spec.origin
    module.__package__ = PACKAGE
    sys.modules[PACKAGE] = module
    import mitmproxy

    mitmproxy.addons = module  # type: ignore[attr-defined]
    return True
