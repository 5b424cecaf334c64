#!/usr/bin/env bash
# The whole test suite, as README.md gives it: prepare the host, then tox (lint, every
# installed Python from 3.9 to 3.13 as the invoking user, and the unprivileged run).
set -euo pipefail
cd "$(dirname "$0")/.."
tests/setup-host.sh
# pyenv's shims only answer for the active versions: make every installed 3.9-3.13 visible
# to tox, the current default first (tox itself is installed there).
if command -v pyenv >/dev/null 2>&1; then
  current=$(pyenv version-name 2>/dev/null | cut -d: -f1)
  others=$(pyenv versions --bare 2>/dev/null | grep -E '^3\.(9|1[0-3])\.[0-9]+$' | grep -vx "$current" | paste -sd: -)
  export PYENV_VERSION="${current}${others:+:$others}"
fi
exec tox "$@"
