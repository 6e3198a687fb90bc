"""What the router process holds: only the mitmproxy addon modules it uses (the rest of the
package still there on first use), no ``requests`` without a control server, no
``tiktoken`` before a vocabulary is built, and what start-up made frozen out of the garbage
collector's reach. Each check runs in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def run(code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_only_the_addons_the_router_uses_are_imported() -> None:
    out = run(
        """
        import sys
        from iron_runtime.addons import lean
        assert lean.import_addons_on_demand()
        from mitmproxy import master
        from mitmproxy.addons import core, next_layer, proxyserver, tlsconfig
        heavy = ("flask", "jinja2", "ldap3", "pyasn1", "click")
        heavy = sorted(m for m in heavy if m in sys.modules)
        print(heavy, "mitmproxy.addons.onboarding" in sys.modules)
        """
    )
    assert out == "[] False"


def test_the_rest_of_the_addons_package_is_there_on_first_use() -> None:
    out = run(
        """
        import sys
        from iron_runtime.addons import lean
        lean.import_addons_on_demand()
        import mitmproxy.addons as addons
        from mitmproxy.addons import core
        names = [type(a).__name__ for a in addons.default_addons()]
        from mitmproxy.addons import anticache
        try:
            addons.no_such_thing
        except AttributeError:
            missing = "AttributeError"
        print(len(names) > 20, "Core" in names, addons.anticache is anticache, missing)
        """
    )
    assert out == "True True True AttributeError"


def test_already_imported_package_is_left_alone() -> None:
    out = run(
        """
        import mitmproxy.addons
        from iron_runtime.addons import lean
        print(lean.import_addons_on_demand(), hasattr(mitmproxy.addons, "default_addons"))
        """
    )
    assert out == "False True"


def test_no_requests_or_tiktoken_until_needed() -> None:
    out = run(
        """
        import sys
        from iron_runtime import proxy_process, pipeline, tokens
        from iron_runtime.addons.iron import make_addons
        make_addons(pipeline.Services())
        before = ("requests" in sys.modules, "tiktoken" in sys.modules)
        tokens.count_text("hello world", "o200k_base")
        from iron_runtime.control import ControlServer
        ControlServer("http://127.0.0.1:9", "ic-token").close()
        print(before, "requests" in sys.modules, "tiktoken" in sys.modules)
        """
    )
    assert out == "(False, False) True True"


def test_first_use_from_many_threads_at_once_finds_the_package() -> None:
    out = run(
        """
        import threading
        from iron_runtime.addons import lean
        lean.import_addons_on_demand()
        import mitmproxy.addons as addons
        results = []
        def use():
            try:
                results.append(callable(addons.default_addons))
            except Exception as e:
                results.append(repr(e))
        threads = [threading.Thread(target=use) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        print(results.count(True), len(results))
        """
    )
    assert out == "8 8"


def test_a_failing_package_init_fails_the_same_way_each_time() -> None:
    out = run(
        """
        import sys
        from iron_runtime.addons import lean
        lean.import_addons_on_demand()
        sys.modules["flask"] = None  # the onboarding addon's import fails
        import mitmproxy.addons as addons
        errors = []
        for _ in range(2):
            try:
                addons.default_addons
            except Exception as e:
                errors.append(type(e).__name__)
        print(errors, hasattr(addons, "no.such"))
        """
    )
    assert out == "['ModuleNotFoundError', 'ModuleNotFoundError'] False"


def test_the_router_freezes_what_start_up_made_before_it_says_ready() -> None:
    out = run(
        """
        import asyncio, gc, io, json
        from iron_runtime.proxy_process import Lifecycle

        class Servers:
            def listen_addrs(self):
                return [("127.0.0.1", 4321)]

        def ready(freeze):
            said = io.StringIO()
            life = Lifecycle(None, Servers(), said, freeze=freeze)
            life._watch_stdin = life._watch_parent = lambda loop: None
            before = gc.get_freeze_count()
            asyncio.run(life.running())
            return json.loads(said.getvalue())["port"], before, gc.get_freeze_count()

        port, before, after = ready(False)
        print(port, before, after)
        port, before, after = ready(True)
        print(port, before == 0, after > 10_000)
        """
    )
    assert out.splitlines() == ["4321 0 0", "4321 True True"]
