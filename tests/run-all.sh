#!/usr/bin/env bash
# The whole test suite, as README.md gives it: prepare the host, then tox (lint, every
# installed Python from 3.9 to 3.13 as the invoking user, and the unprivileged run).
set -euo pipefail
cd "$(dirname "$0")/.."
tests/setup-host.sh
# pyenv's shims answer only for the active version, and tox queries interpreters with a clean
# environment: put every installed 3.9-3.13 on PATH itself, after what is already there.
if command -v pyenv >/dev/null 2>&1; then
  for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.(9|1[0-3])\.[0-9]+$'); do
    PATH="$PATH:$(pyenv root)/versions/$v/bin"
  done
  export PATH
fi
exec tox "$@"
