"""All iron_runtime addons in the order their hooks must run; ``addons/iron.py`` at the top
of a checkout loads this module for ``mitmdump -s`` and ``mitmweb -s``.

The order is the pipeline's (``iron_runtime.pipeline``): pricing and control set up the
services, admin answers its own paths, the router admits, chooses the key and forwards, the
gateway translates, the budget reserves, and at the end the budget settles and analytics
records. Every addon receives the same ``Services``; none looks another up.
"""

from __future__ import annotations

from typing import Any

from iron_runtime.addons import egress, intake, listen
from iron_runtime.addons.admin import Admin
from iron_runtime.addons.analytics import Analytics
from iron_runtime.addons.budget import Budget
from iron_runtime.addons.control import Control
from iron_runtime.addons.gateway import Gateway
from iron_runtime.addons.pricing import Pricing
from iron_runtime.addons.router import Router
from iron_runtime.pipeline import Services


def make_addons(services: Services | None = None) -> list[Any]:
    """A fresh set of iron_runtime addons sharing ``services``, in the order their hooks
    must run; installs the HTTP/1 intake and egress and the listen backlog (once per
    process). ``Backlog`` resizes listeners bound before a ``-s`` script is loaded."""
    intake.install()
    egress.install()
    listen.install()
    s = services or Services()
    return [
        listen.Backlog(),
        Pricing(s),
        Control(s),
        Admin(s),
        Router(s),
        Gateway(s),
        Budget(s),
        Analytics(s),
    ]


addons = make_addons()
