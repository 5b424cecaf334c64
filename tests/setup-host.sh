#!/usr/bin/env bash
# Prepares a Debian/Ubuntu machine for the test suite (run as root; idempotent):
# the Debian packages the tests exercise for real, tox, the unprivileged test user, and the
# cached root filesystem of the Debian test image.
set -euo pipefail

packages=(
  docker-registry   # the registry server the tests pull from (CNCF distribution)
  skopeo umoci      # independent OCI tools the tests check ucore's output with
  busybox-static    # the test images' userland
  debootstrap       # the Debian (glibc) test image's root, built below
  apache2-utils     # htpasswd, for the Basic-auth registry
  zstd curl git ca-certificates
  proot runc crun fakechroot fakeroot patchelf  # the engines (fakeroot: F modes' root emulation)
  bubblewrap        # bwrap, for the example engine examples/ucore-bwrap
  uidmap            # newuidmap/newgidmap: runc as a user other than the container's root
  gcc libc6-dev binutils  # the synthetic GPU host's libraries and programs (built by the tests; readelf checks them)
  python3 python3-venv util-linux
  slurm-wlm munge   # a real single-node Slurm that the HPC tests start (tests/support/slurm.py)
  openmpi-bin libopenmpi-dev  # the host's MPI launcher and compiler for the MPI tests
)

if [ "$(id -u)" -ne 0 ]; then
  echo "setup-host.sh: run as root (it installs packages and creates the test user)" >&2
  exit 2
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The Debian package starts a registry on port 5000 that the tests do not use.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active -q docker-registry 2>/dev/null; then
  systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi

if ! command -v tox >/dev/null 2>&1; then
  python3 -m pip install -q tox 2>/dev/null \
    || python3 -m pip install -q --break-system-packages tox
fi

# The unprivileged user that the "unpriv" tox environment runs the suite as.
if ! id ucore-test >/dev/null 2>&1; then
  useradd --create-home --shell /bin/bash ucore-test
fi
# Subordinate ids for it (useradd adds them only where /etc/subuid already existed).
for kind in uid gid; do
  if ! grep -q "^ucore-test:" "/etc/sub$kind" 2>/dev/null; then
    usermod "--add-sub${kind}s" 100000-165535 ucore-test
  fi
done

# The root filesystem of the Debian test image (glibc, for the Fakechroot engines): debootstrap
# needs root and the network, so it is built here, once, into $UCORE_TEST_CACHE (default
# /var/cache/ucore-tests, readable by ucore-test); a no-op when already there.
python3 "$(dirname "$0")/support/debian.py" >/dev/null
# Debian's MPICH library (apt-get download): the mismatching image of the MPI check tests.
python3 "$(dirname "$0")/support/mpich.py" >/dev/null
# The MPI test image's root: the same Debian with Debian's Open MPI runtime and a two-rank
# program compiled with the host's mpicc (tests/support/mpi.py); a no-op when already there.
python3 "$(dirname "$0")/support/mpi.py" >/dev/null
# The older-glibc root (Debian bullseye, glibc 2.31, with python3-venv) that ucore's wheels are
# installed into and run from as ucore-test (tests/support/bullseye.py); a no-op when there.
python3 "$(dirname "$0")/support/bullseye.py" >/dev/null
# The Debian unstable root with a real Apptainer (1.4.x), squashfs-tools, uidmap and
# python3-venv, in which the singularity engine (S1) runs its conformance suite as root and as
# ucore-test (tox env singularity; tests/support/apptainer.py); a no-op when already there.
python3 "$(dirname "$0")/support/apptainer.py" >/dev/null
