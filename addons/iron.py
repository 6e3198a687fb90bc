"""All iron_runtime addons, for ``mitmdump -s addons/iron.py`` and ``mitmweb -s addons/iron.py``
from a checkout. The addons themselves are the package ``iron_runtime.addons``; an installed
router can also be loaded with ``-s`` pointing at ``iron_runtime/addons/iron.py``."""

try:
    from iron_runtime.addons.iron import addons  # noqa: F401 - what mitmproxy loads
except ModuleNotFoundError as e:  # pragma: no cover - a message for a checkout without install
    raise SystemExit(
        f"iron_runtime is not installed in this Python ({e}); run `pip install -e .` first."
    ) from e
