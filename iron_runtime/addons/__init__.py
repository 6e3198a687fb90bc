"""mitmproxy addons of iron_runtime. ``iron.py`` loads them all (``mitmdump -s addons/iron.py``)."""
