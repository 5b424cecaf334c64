"""The older-glibc root that ucore's wheels are tried in (``support/bullseye.py``).

A later test installs ucore into a venv inside it and runs containers from there as
``ucore-test``; these check the ground it stands on: bullseye's glibc 2.31, the unprivileged
user's identity inside, a venv that has pip, files written through a bound host directory owned
by that user on the host, and no mount left on the host after a run. Marked ``hpc``: it runs as
root (extracting with owners, the namespace's mounts), in the hpc tox environment.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

import pytest
from support import bullseye

pytestmark = pytest.mark.hpc


def run(root: Path, script: str, binds: tuple[Path, ...] = ()) -> str:
    """``sh -c SCRIPT`` in the root as ucore-test; its stdout. Afterwards nothing of the run is
    mounted on the host, below the root or anywhere under the bound directories."""
    result = bullseye.run_in_root(root, ["sh", "-c", script], env={}, timeout=120, binds=binds)
    mounts = subprocess.run(
        ["findmnt", "--raw", "--noheadings", "--output", "TARGET"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    left = [m for m in mounts if m.startswith(str(root.parent)) or m in map(str, binds)]
    assert left == [], f"still mounted on the host: {left}"
    assert result.returncode == 0, f"{script}: {result.returncode}\n{result.stderr}"
    return result.stdout


def test_glibc_is_bullseyes(bullseye_root: Path) -> None:
    root = bullseye_root
    first = run(root, "ldd --version").splitlines()[0]
    assert first.endswith(f" {bullseye.GLIBC}"), first


def test_runs_as_the_unprivileged_user(bullseye_root: Path) -> None:
    root = bullseye_root
    entry = pwd.getpwnam(bullseye.USER)
    assert run(root, 'id -u; id -g; id -un; echo "$HOME"; cd && pwd').split() == [
        str(entry.pw_uid),
        str(entry.pw_gid),
        bullseye.USER,
        f"/home/{bullseye.USER}",
        f"/home/{bullseye.USER}",
    ]


def test_venv_has_pip(bullseye_root: Path) -> None:
    root = bullseye_root
    out = run(root, "python3 -m venv /tmp/v && /tmp/v/bin/pip --version")
    assert out.startswith("pip ") and "/tmp/v/" in out, out


def test_bound_directory_is_written_as_the_user(bullseye_root: Path) -> None:
    root = bullseye_root
    entry = pwd.getpwnam(bullseye.USER)
    shared = root.parent / "shared"
    shared.mkdir()
    shared.chmod(0o700)
    os.chown(shared, entry.pw_uid, entry.pw_gid)
    run(root, f"echo hello > {shared}/written", binds=(shared,))
    written = shared / "written"
    assert written.read_text() == "hello\n"
    assert (written.stat().st_uid, written.stat().st_gid) == (entry.pw_uid, entry.pw_gid)
