"""A root with a real Apptainer, for the singularity engine's (S1) conformance run.

Debian's bookworm has no Apptainer; its unstable suite has ``apptainer`` 1.4.x, which needs a
newer glibc than this host's. So the S1 suite runs inside a Debian unstable root::

    debootstrap --variant=minbase --include=PACKAGES sid DIR MIRROR

with Apptainer, ``squashfs-tools`` (``apptainer build`` of a SIF), ``uidmap`` (``--fakeroot``
for a user with ``/etc/subuid`` entries), ``python3-venv`` (ucore installs into a venv there),
``docker-registry`` and ``busybox-static`` (the suite's registry and busybox image), and GNU
``time`` (``bench/s1.py``). The tar is
made and cached in ``$UCORE_TEST_CACHE`` as :mod:`debian`'s is; ``tests/setup-host.sh`` builds
it once with ``python3 tests/support/apptainer.py``.

:func:`enter_argv` enters an unpacked copy: root makes a private mount and pid namespace
(``unshare``), mounts /proc, /dev, /sys, a tmpfs on /tmp and the given host paths, then
``pivot_root``\\ s into it. Not ``chroot``: the kernel refuses a chrooted process a new user
namespace, and unprivileged Apptainer needs one. Then ``setpriv`` drops to the user (kept as
root for the root run). The network stays the host's.

``python3 tests/support/apptainer.py suite [pytest args]`` (the tox environment
``singularity``) does the whole run: unpack, install ucore and ucore-singularity into a venv
inside, then the singularity tests as root and again as ``ucore-test``.
``python3 tests/support/apptainer.py bench [args]`` runs ``bench/s1.py`` there as ``ucore-test``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

if __package__:
    from . import bullseye, debian, process
else:  # run as a script, before ucore is installed: this directory is sys.path[0]
    import bullseye  # type: ignore[no-redef]
    import debian  # type: ignore[no-redef]
    import process  # type: ignore[no-redef]

SUITE = "sid"
PACKAGES = (
    "apptainer",
    "squashfs-tools",
    "uidmap",
    "python3-venv",
    "docker-registry",
    "busybox-static",
    "ca-certificates",
    "time",  # GNU time, which bench/s1.py's runner measures with
)
#: Bump whenever what goes into the tar changes.
RECIPE = 2
USER = "ucore-test"
#: Where the checkout is seen inside (a copy: the unprivileged user cannot read /root).
CHECKOUT = "/src"
VENV = "/opt/ucore"

#: ``sh`` as the first process of the new namespaces. Arguments: root, user (or ``root``),
#: home, then ``HOST=INSIDE`` binds, ``--``, then ``env``'s assignments and the program.
_ENTER = r"""
set -e
root=$1 user=$2 home=$3
shift 3
mount --bind "$root" "$root"
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount --rbind /sys "$root/sys"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
while [ "$1" != -- ]; do
  if [ -d "${1%%=*}" ]; then
    mkdir -p "$root${1#*=}"
  else
    mkdir -p "$(dirname "$root${1#*=}")"
    : >>"$root${1#*=}"
  fi
  mount --bind "${1%%=*}" "$root${1#*=}"
  shift
done
shift
cd "$root"
mkdir -p .old-root
pivot_root . .old-root
cd /
umount -l /.old-root
rmdir /.old-root
if [ "$user" = root ]; then
  /usr/bin/env -i -C "$home" "$@"
else
  /usr/bin/setpriv --reuid="$user" --regid="$user" --init-groups \
    /usr/bin/env -i -C "$home" "$@"
fi
exit $?
"""


def rootfs_tar_path() -> Path:
    name = f"debian-{SUITE}-apptainer-{debian.architecture()}-r{RECIPE}.tar"
    return debian.cache_dir() / name


def apptainer_rootfs_tar() -> Path:
    """The cached tar, built first when missing and this is root."""
    return debian.cached_tar(rootfs_tar_path(), "tests/support/apptainer.py", _build)


def _build(scratch: Path, out: BinaryIO) -> None:
    debian.debootstrap(scratch / "root", PACKAGES, SUITE)
    debian.write_tar(scratch / "root", out)


def add_user(root: Path, name: str = USER) -> str:
    """The host user in the root's account files and ``/etc/subuid``/``/etc/subgid`` (the
    range ``--fakeroot`` maps), with a home of its own; its home inside."""
    entry = pwd.getpwnam(name)
    home = bullseye.add_account(root, entry)
    for database in ("subuid", "subgid"):
        path = root / "etc" / database
        path.touch()
        bullseye.add_line(path, f"{name}:100000:65536")
    return home


def enter_argv(
    root: Path,
    argv: Sequence[str],
    env: dict[str, str],
    user: str = USER,
    binds: Sequence[tuple[Path, str]] = (),
) -> list[str]:
    """The command that runs ``argv`` inside ``root`` as ``user`` (or ``root``), with exactly
    ``env`` (after ``HOME``, ``USER`` and ``PATH``), each (host path, inside path) bound."""
    home = "/root" if user == "root" else add_user(root, user)
    variables = {"HOME": home, "USER": user, "PATH": "/usr/local/bin:/usr/bin:/bin", **env}
    return process.in_namespaces(
        _ENTER,
        str(root),
        user,
        home,
        *(f"{host}={inside}" for host, inside in binds),
        "--",
        *(f"{name}={value}" for name, value in variables.items()),
        *argv,
    )


def _pip_settings() -> tuple[dict[str, str], list[tuple[Path, str]]]:
    """The host pip's package-index settings, for pip inside: its ``PIP_*`` variables, its
    configuration files (at ``/etc/pip.conf`` inside, where pip reads a site's), and every
    local path they name (a certificate bundle, a ``find-links`` folder, a ``file://`` index),
    bound at the same path."""
    env = {k: v for k, v in os.environ.items() if k.startswith("PIP_")}
    files = [Path("/etc/pip.conf"), Path.home() / ".config/pip/pip.conf"]
    configs = [path for path in files if path.is_file()]
    binds: list[tuple[Path, str]] = []
    words = " ".join(env.values()).split()
    for n, path in enumerate(configs):
        inside = "/etc/pip.conf" if n == 0 else "/etc/xdg/pip/pip.conf"
        binds.append((path, inside))
        words += path.read_text().replace("=", " ").split()
    for word in words:
        local = Path(word.removeprefix("file://"))
        if local.name == "simple":  # a local index links its files beside it
            local = local.parent
        if local.is_absolute() and local.exists() and str(local) not in ("/", "/etc/pip.conf"):
            binds.append((local, str(local)))
    return env, binds


def _copy_checkout(source: Path, dest: Path) -> None:
    """What the suite needs of the checkout, readable by the test user."""
    names = ["pyproject.toml", "VERSION", "core", "plugins/singularity", "tests/support", "bench"]
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", ".tox", ".cache")
    for name in names:
        src = source / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore, symlinks=False)
        else:
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dest / name)
    subprocess.run(["chmod", "-R", "a+rX", str(dest)], check=True)


@contextlib.contextmanager
def prepared_root() -> Iterator[Path]:
    """An unpacked copy of the cached root with the checkout at :data:`CHECKOUT` and ucore
    and ucore-singularity (and pytest) installed in a venv at :data:`VENV`, by root inside;
    removed afterwards."""
    checkout = Path(__file__).resolve().parents[2]
    tar = apptainer_rootfs_tar()
    with tempfile.TemporaryDirectory(prefix="ucore-s1-", dir="/var/tmp") as scratch:
        root = bullseye.extract(tar, Path(scratch) / "root")
        (root / "etc/resolv.conf").write_bytes(Path("/etc/resolv.conf").read_bytes())
        # The tar leaves the time zones out, so /etc/localtime dangles; the runtime binds it
        # (a default "bind path") into every container, its own SIF extraction's included,
        # and fails on a missing source. The host's zone, as a file, is what a host has. (The
        # link is absolute: Path.exists would follow it on this host, so it is not asked.)
        localtime = root / "etc/localtime"
        if Path("/etc/localtime").exists():
            localtime.unlink(missing_ok=True)
            localtime.write_bytes(Path("/etc/localtime").read_bytes())
        _copy_checkout(checkout, root / CHECKOUT.lstrip("/"))
        pip_env, pip_binds = _pip_settings()
        install = (
            f"python3 -m venv {VENV} && {VENV}/bin/pip install -q ./core ./plugins/singularity"
            " 'pytest>=7.4' 'cryptography>=41'"
        )
        env = {"LANG": "C.UTF-8", **pip_env}
        code = _run(root, ["sh", "-c", f"cd {CHECKOUT} && {install}"], env, "root", pip_binds)
        if code:
            raise RuntimeError(f"installing ucore inside {root} failed (exit status {code})")
        yield root


def suite(pytest_args: Sequence[str]) -> int:
    """The singularity tests as root and as the unprivileged user; the worse exit status."""
    test = [f"{VENV}/bin/python", "-m", "pytest", "-p", "no:cacheprovider"]
    test += ["--rootdir", CHECKOUT, "-c", f"{CHECKOUT}/pyproject.toml"]
    test += ["plugins/singularity/tests", *pytest_args]
    worst = 0
    with prepared_root() as root:
        for user in ("root", USER):
            print(f"== the singularity tests as {user}, Apptainer inside {SUITE}", flush=True)
            cmd = ["sh", "-c", f'cd {CHECKOUT} && exec "$@"', "sh", *test]
            worst = max(worst, _run(root, cmd, {"LANG": "C.UTF-8"}, user))
    return worst


def bench(args: Sequence[str]) -> int:
    """``bench/s1.py`` inside, as the unprivileged user."""
    with prepared_root() as root:
        cmd = ["sh", "-c", f'cd {CHECKOUT}/bench && exec "$@"', "sh", f"{VENV}/bin/python"]
        env = {"LANG": "C.UTF-8", "PATH": f"{VENV}/bin:/usr/local/bin:/usr/bin:/bin"}
        return _run(root, [*cmd, "s1.py", *args], env, USER)


#: The longest one step inside may take (an install, a run of the suite, the bench): a hang
#: ends there, not at CI's own limit. About ten times what each takes here.
STEP_TIMEOUT = 600


def _run(
    root: Path,
    argv: Sequence[str],
    env: dict[str, str],
    user: str,
    binds: Sequence[tuple[Path, str]] = (),
) -> int:
    """``argv`` inside ``root``, its output the caller's; on timeout everything inside ends
    (killing ``unshare`` ends its namespace: ``--kill-child``) and the status is 124."""
    command = enter_argv(root, argv, env, user, binds)
    host_env = {"PATH": debian.search_path(), "LC_ALL": "C"}
    try:
        return subprocess.run(command, env=host_env, timeout=STEP_TIMEOUT).returncode
    except subprocess.TimeoutExpired:
        print(f"{argv[-1]!r} inside {root}: no end after {STEP_TIMEOUT} s", file=sys.stderr)
        return 124


def main() -> int:
    if sys.argv[1:2] == ["suite"]:
        return suite(sys.argv[2:])
    if sys.argv[1:2] == ["bench"]:
        return bench(sys.argv[2:])
    return debian.script_main(rootfs_tar_path(), _build, "debootstrap needs it")


if __name__ == "__main__":
    sys.exit(main())
