"""The built wheel carries everything: LlmRouter works from a fresh virtual environment."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent("""
    import json, urllib.request
    import iron_runtime
    from iron_runtime import LlmRouter
    from iron_runtime.testing import OpenAIEmulator
    assert "site-packages" in iron_runtime.__file__, iron_runtime.__file__
    with OpenAIEmulator() as emu, LlmRouter(provider_key=emu.api_key,
                                            upstreams={"openai": emu.url}) as router:
        req = urllib.request.Request(
            router.base_url + "/chat/completions",
            data=json.dumps({"model": "gpt-4o",
                             "messages": [{"role": "user", "content": "from a wheel"}]}).encode(),
            headers={"authorization": "Bearer " + router.api_key,
                     "content-type": "application/json"})
        body = json.load(urllib.request.urlopen(req, timeout=30))
        print(body["choices"][0]["message"]["content"])
""")


@pytest.mark.timeout(600)
def test_wheel_installs_into_a_fresh_venv_and_routes(tmp_path):
    dist, venv = tmp_path / "dist", tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dist), str(ROOT)],
        check=True,
        capture_output=True,
    )
    wheel = next(dist.glob("iron_runtime-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(wheel)],
        check=True,
        capture_output=True,
    )
    run = subprocess.run(
        [str(py), "-c", SCRIPT],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "Echo: from a wheel"
    assert (venv / "bin" / "iron-runtime").exists()


def test_every_package_is_listed_for_the_wheel():
    import tomllib

    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "iron_runtime").rglob("__init__.py")
    }
    found.add("iron_runtime.addons")  # addons/ ships as iron_runtime.addons
    assert found <= listed, f"missing from pyproject.toml packages: {sorted(found - listed)}"
