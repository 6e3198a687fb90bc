"""All iron_runtime addons in the order their hooks must run; ``addons/iron.py`` at the top
of a checkout loads this module for ``mitmdump -s`` and ``mitmweb -s``."""

from iron_runtime.addons.admin import Admin
from iron_runtime.addons.analytics import Analytics
from iron_runtime.addons.budget import Budget
from iron_runtime.addons.control import Control
from iron_runtime.addons.gateway import Gateway
from iron_runtime.addons.pricing import Pricing
from iron_runtime.addons.router import Router


def make_addons() -> list:
    """A fresh set of iron_runtime addons, in the order their hooks must run."""
    return [Pricing(), Control(), Admin(), Router(), Gateway(), Budget(), Analytics()]


addons = make_addons()
