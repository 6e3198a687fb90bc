"""The built wheel carries everything: LlmRouter works from a fresh virtual environment, and
``iron-runtime demo`` either runs or names the one command that makes it run."""

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


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory):
    """The wheel, built once (its verbose build output kept in ``build.log`` beside ``dist``),
    and a fresh virtual environment with it installed (plain ``pip install``, no extras)."""
    tmp = tmp_path_factory.mktemp("wheel")
    dist, venv = tmp / "dist", tmp / "venv"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(dist), str(ROOT)],
        check=True,
        capture_output=True,
        text=True,
    )
    (tmp / "build.log").write_text(build.stdout + build.stderr)
    wheel = next(dist.glob("iron_runtime-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    _pip_install(py, str(wheel))
    return wheel, venv


def _pip_install(py: Path, target: str) -> None:
    subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", target],
        check=True,
        capture_output=True,
    )


def _clean_env(home: Path) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": str(home)}


@pytest.mark.timeout(600)
def test_wheel_installs_into_a_fresh_venv_and_routes(wheel_venv, tmp_path):
    _, venv = wheel_venv
    run = subprocess.run(
        [str(venv / "bin" / "python"), "-c", SCRIPT],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=_clean_env(tmp_path),
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "Echo: from a wheel"
    assert (venv / "bin" / "iron-runtime").exists()


@pytest.mark.timeout(600)
def test_demo_names_its_extra_then_runs_once_it_is_installed(wheel_venv, tmp_path):
    wheel, venv = wheel_venv
    py, cli = venv / "bin" / "python", venv / "bin" / "iron-runtime"
    sdks = "import importlib.util as u; print(u.find_spec('openai'), u.find_spec('anthropic'))"
    check = subprocess.run([str(py), "-c", sdks], capture_output=True, text=True, check=True)
    assert check.stdout.split() == ["None", "None"]  # a plain install brings no SDK

    bare = subprocess.run(
        [str(cli), "demo"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=_clean_env(tmp_path),
    )
    assert bare.returncode == 2
    assert bare.stdout == ""
    (line,) = bare.stderr.splitlines()  # one line, no traceback
    assert line.endswith("pip install 'iron-runtime[demo]'"), line
    assert "OpenAI and Anthropic SDKs" in line

    _pip_install(py, f"{wheel}[demo]")  # the command the line names, from the same wheel
    full = subprocess.run(
        [str(cli), "demo"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=_clean_env(tmp_path),
    )
    assert full.returncode == 0, full.stderr
    assert "tool call #0: get_weather" in full.stdout
    assert "Done: router stopped" in full.stdout


def test_every_package_is_listed_for_the_wheel():
    import tomllib

    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "iron_runtime").rglob("__init__.py")
    }
    assert found <= listed, f"missing from pyproject.toml packages: {sorted(found - listed)}"


@pytest.mark.timeout(600)
def test_the_build_prints_no_setuptools_warning(wheel_venv):
    wheel, _ = wheel_venv
    log = (wheel.parent.parent / "build.log").read_text()
    assert "Building wheel for iron-runtime" in log  # the backend's output is there to check
    warnings = [
        line.strip()
        for line in log.splitlines()
        if "Warning:" in line or "would be ignored" in line or "is deprecated" in line
    ]
    assert warnings == []
