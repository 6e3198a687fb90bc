"""All iron_runtime addons, for ``mitmdump -s addons/iron.py`` and ``mitmweb -s addons/iron.py``.

The package must be installed (``pip install -e .``) so that the core can be imported.
"""

try:
    from iron_runtime.addons.admin import Admin
    from iron_runtime.addons.analytics import Analytics
    from iron_runtime.addons.budget import Budget
    from iron_runtime.addons.control import Control
    from iron_runtime.addons.gateway import Gateway
    from iron_runtime.addons.pricing import Pricing
    from iron_runtime.addons.router import Router
except ModuleNotFoundError as e:  # pragma: no cover - a message for a checkout without install
    raise SystemExit(
        f"iron_runtime is not installed in this Python ({e}); run `pip install -e .` first."
    ) from e


def make_addons() -> list:
    """A fresh set of iron_runtime addons, in the order their hooks must run."""
    return [Pricing(), Control(), Admin(), Router(), Gateway(), Budget(), Analytics()]


addons = make_addons()
