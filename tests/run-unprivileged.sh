#!/usr/bin/env bash
# Runs the test suite as the unprivileged user ucore-test from a world-readable copy of the
# tests, with the tox environment ENVDIR (which must be outside any private directory).
# Usage: run-unprivileged.sh ENVDIR [pytest args...]; as a non-root user it runs as that user.
set -euo pipefail
envdir=$1
shift
suite="$envdir/suite"
rm -rf "$suite"
mkdir -p "$suite"
cd "$(dirname "$0")/.."
# VERSION, tools/ and the pyproject files: tests/test_packaging.py checks the one version;
# docs/: the documentation's coverage (core/tests) and its example plugins (tests/);
# examples/*/tests: the example engine's conformance class.
tar --exclude=__pycache__ -cf - pyproject.toml VERSION tools docs core/pyproject.toml core/tests \
  tests plugins/*/pyproject.toml plugins/*/tests examples/*/pyproject.toml examples/*/tests \
  | tar -xf - -C "$suite"
chmod -R a+rX "$envdir"
cmd=("$envdir/bin/python" -m pytest -p no:cacheprovider --rootdir "$suite" -c "$suite/pyproject.toml" "$@")
cd "$suite"
if [ "$(id -u)" -eq 0 ]; then
  exec runuser -u ucore-test -- env -i HOME="$(getent passwd ucore-test | cut -d: -f6)" \
    PATH="$envdir/bin:/usr/local/bin:/usr/bin:/bin" LANG=C.UTF-8 CI="${CI:-}" \
    ${UCORE_TEST_CACHE:+UCORE_TEST_CACHE="$UCORE_TEST_CACHE"} "${cmd[@]}"
fi
exec "${cmd[@]}"
