#!/usr/bin/env bash
# ucore-gpu on a real NVIDIA GPU, in every installed engine, in under five minutes.
#
#   bench/gpu-check.sh prepare      # where the package registries are reachable: builds the
#                                   # cudaquery image tarball and a wheelhouse in
#                                   # bench/.cache/gpu-check (carry that folder to the GPU machine)
#   bench/gpu-check.sh              # on the GPU machine, no network: installs ucore from the
#                                   # wheelhouse into a throw-away venv, loads the image, runs
#                                   # nvidia-smi -L and a CUDA device query in each engine
#   bench/gpu-check.sh synthetic    # the same against the tests' synthetic host (no GPU needed)
#
# The engines are whatever that machine has (proot, runc, crun); bench/gpu_check.py says which
# it could not use and why. Exit status 0 only when every check passed.
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench/.cache/gpu-check
action="${1:-run}"

if [ "$action" = prepare ]; then
  # an interpreter with ucore's dependencies: the README's .venv where there is one
  python="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
  exec "$python" bench/gpu_check.py prepare --out "$out"
fi

venv="$(mktemp -d /tmp/ucore-gpu-check-venv.XXXXXX)"
trap 'rm -rf "$venv"' EXIT
python3 -m venv "$venv"
"$venv/bin/pip" install -q --no-index --find-links "$out/wheels" ucore ucore-proot ucore-runc ucore-gpu
flags=()
[ "$action" = synthetic ] && flags+=(--synthetic)
timeout 290 "$venv/bin/python" bench/gpu_check.py run --out "$out" "${flags[@]}"
