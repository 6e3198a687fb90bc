# Sourced by scripts/test and scripts/demo: make sure .venv exists with Python 3.12+ and the
# project installed (editable, with the dev extra), then put it first on PATH.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

python_ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; }

find_python() {
    for candidate in "${PYTHON:-}" python3.13 python3.12 python3; do
        if [ -n "$candidate" ] && command -v "$candidate" >/dev/null && python_ok "$candidate"; then
            command -v "$candidate"; return 0
        fi
    done
    if command -v pyenv >/dev/null; then
        for v in 3.13 3.12; do
            local p
            p="$(PYENV_VERSION=$v pyenv which python3 2>/dev/null)" || continue
            if python_ok "$p"; then echo "$p"; return 0; fi
        done
    fi
    echo "Python 3.12 or newer is needed (set PYTHON=/path/to/python3.12)" >&2
    return 1
}

if [ ! -x .venv/bin/python ] || ! python_ok .venv/bin/python; then
    rm -rf .venv
    "$(find_python)" -m venv .venv
fi
stamp=.venv/.installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
    touch "$stamp"
fi
export PATH="$ROOT/.venv/bin:$PATH"
