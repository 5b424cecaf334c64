"""An older-glibc Debian userland that ucore itself runs in: bullseye with Python's venv.

ucore's wheels and the binaries it carries are built on this host, Debian 12 (glibc 2.36); a
user's machine may well be older. The mirror here serves bullseye (Debian 11, glibc 2.31) as
its oldest suite, so a test installs ucore into a venv inside this root, as the unprivileged
user, and runs containers from there: a carried binary that needs a newer glibc than 2.31 fails
there, where on the build host it would pass.

How it is made (Debian 12, debootstrap 1.0.128+nmu2+deb12u2, amd64)::

    debootstrap --variant=minbase --include=python3,python3-venv bullseye DIR MIRROR

takes about 40 s. ``python3-venv`` brings ``python-pip-whl``, whose wheels in
``/usr/share/python-wheels`` are what ``python3 -m venv`` installs pip from (Debian's
``ensurepip`` reads them there, offline). The tar is made as :mod:`debian`'s is (same leaving-out,
which keeps that directory; one mtime, sorted entries), cached in ``$UCORE_TEST_CACHE`` by
``python3 tests/support/bullseye.py`` as root (``tests/setup-host.sh`` runs it).

A test runs programs in it with :func:`run_in_root`: root makes a private mount (and pid)
namespace with the kernel's file systems and the test's directories mounted into the root,
chroots, and becomes the unprivileged user there. The network stays the host's, so a registry
on 127.0.0.1 is reachable from inside.
"""

from __future__ import annotations

import grp
import os
import pwd
import subprocess
import sys
import tarfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import BinaryIO

if __package__:
    from . import debian, process
else:  # run as a script, before ucore is installed: this directory is sys.path[0]
    import debian  # type: ignore[no-redef]
    import process  # type: ignore[no-redef]

SUITE = "bullseye"
#: What ``ldd --version`` reports in the root.
GLIBC = "2.31"
PACKAGES = ("python3", "python3-venv")
#: Bump whenever what goes into the tar changes.
RECIPE = 1
USER = "ucore-test"
#: The user's ``PATH`` inside (Debian's default for a user's login).
PATH = "/usr/local/bin:/usr/bin:/bin"

#: Run by ``sh`` as the first process of the new namespaces. Arguments: the root, UID:GID, the
#: user's home inside, the paths to bind, ``--``, then ``env``'s assignments and the program.
#: Mount points of the binds are made after /tmp's tmpfs, so that host paths under /tmp (where
#: pytest's ``tmp_path`` lies) get theirs in it. The program is not exec'd: ``sh`` stays the
#: namespace's init, the program keeps a program's signal handling (init ignores signals it
#: has no handler for).
_ENTER = r"""
set -e
root=$1 ids=$2 home=$3
shift 3
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount --rbind /sys "$root/sys"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
while [ "$1" != -- ]; do
  if [ -d "$1" ]; then
    mkdir -p "$root$1"
  else
    mkdir -p "$root$(dirname "$1")"
    : >>"$root$1"
  fi
  mount --bind "$1" "$root$1"
  shift
done
shift
chroot --userspec="$ids" --groups="${ids#*:}" "$root" /usr/bin/env -i -C "$home" "$@"
exit $?
"""


def rootfs_tar_path() -> Path:
    name = f"debian-{SUITE}-{debian.VARIANT}-{debian.architecture()}-r{RECIPE}.tar"
    return debian.cache_dir() / name


def bullseye_rootfs_tar() -> Path:
    """The cached tar, built first when missing and this is root.

    :raises debian.CacheMissing: missing, and not root.
    """
    return debian.cached_tar(rootfs_tar_path(), "tests/support/bullseye.py", _build)


def _build(scratch: Path, out: BinaryIO) -> None:
    debian.debootstrap(scratch / "root", PACKAGES, SUITE)
    debian.write_tar(scratch / "root", out)


def extract(tar: Path, dest: Path) -> Path:
    """Unpack ``tar`` into ``dest`` (made if missing) as root, owners by number, modes, setuid
    bits and symlinks as they are (absolute links point into the root once chrooted); the
    root.

    The tar has no entry for its top directory, so ``dest`` is made 0755 like ``/``: pytest's
    0700 directories would otherwise keep the unprivileged user out of everything inside.
    """
    dest.mkdir(parents=True, exist_ok=True)
    dest.chmod(0o755)
    with tarfile.open(tar) as archive:
        if hasattr(tarfile, "data_filter"):  # extraction filters (3.12, and backported)
            archive.extractall(dest, numeric_owner=True, filter=_inside)
        else:  # Debian 12's 3.11.2, which setup-host.sh and the hpc environment run
            members = [_inside(member, str(dest)) for member in archive.getmembers()]
            archive.extractall(dest, members, numeric_owner=True)
    return dest


def _inside(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    """An extraction filter that refuses names (and hard links' targets, names too) that are
    absolute or climb with ``..``, and keeps everything else as the tar has it."""
    names = [member.name, member.linkname] if member.islnk() else [member.name]
    for name in names:
        if name.startswith("/") or ".." in PurePosixPath(name).parts:
            raise ValueError(f"{name!r} in the tar would land outside {dest}")
    return member


def run_in_root(
    root: Path,
    argv: list[str],
    *,
    user: str = USER,
    env: dict[str, str],
    timeout: float,
    binds: Sequence[Path] = (),
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in ``root`` as the host's ``user`` (its uid and gid, added to the root's
    /etc/passwd and /etc/group, with a home directory of its own there), output captured.

    Root makes private mount and pid namespaces (``unshare``) with a fresh /proc, the host's
    /dev and /sys, a tmpfs on /tmp and each path of ``binds`` at the same path inside, then
    chroots and drops to the user. The environment is ``HOME``, ``USER``, ``LOGNAME`` and
    ``PATH`` for the user, then ``env``. Nothing is mounted on the host: the mounts are the
    namespace's, gone with its last process; and the pid namespace makes that process the
    call's: when its init ends (the program returned, or a timeout killed the whole process
    group) the kernel kills whatever the program left running, a daemon in a new session
    included, so no mount outlives the call.

    :raises subprocess.TimeoutExpired: after ``timeout`` seconds, everything killed.
    """
    entry = pwd.getpwnam(user)
    home = add_account(root, entry)
    variables = {"HOME": home, "USER": user, "LOGNAME": user, "PATH": PATH, **env}
    # env(1) takes every word with a "=" before the program for an assignment.
    if not argv or "=" in argv[0] or any(not name or "=" in name for name in variables):
        raise ValueError(f"env(1) cannot run {argv} with the variables {sorted(variables)}")
    for path in binds:
        if not path.is_absolute():
            raise ValueError(f"bind {path}: not an absolute path")
    command = process.in_namespaces(
        _ENTER,
        str(root),
        f"{entry.pw_uid}:{entry.pw_gid}",
        home,
        *(str(path) for path in binds),
        "--",
        *(f"{name}={value}" for name, value in variables.items()),
        *argv,
    )
    return process.run_group(command, timeout, env={"PATH": debian.search_path(), "LC_ALL": "C"})


def add_account(root: Path, entry: pwd.struct_passwd) -> str:
    """The host user and its primary group in the root's /etc/passwd and /etc/group (once),
    and its home directory inside, owned by it: pip and ucore write below ``$HOME``. Its
    home inside."""
    name = entry.pw_name
    group = grp.getgrgid(entry.pw_gid).gr_name
    home = f"/home/{name}"
    add_line(root / "etc/passwd", f"{name}:x:{entry.pw_uid}:{entry.pw_gid}::{home}:/bin/sh")
    add_line(root / "etc/group", f"{group}:x:{entry.pw_gid}:")
    directory = root / home.lstrip("/")
    directory.mkdir(parents=True, exist_ok=True)
    os.chown(directory, entry.pw_uid, entry.pw_gid)
    directory.chmod(0o755)
    return home


def add_line(path: Path, line: str) -> None:
    """Append ``line`` to the colon-separated database ``path`` unless its name is there; a
    different entry of that name is an error (another id would make files owned by someone
    else)."""
    name = line.split(":", 1)[0]
    for existing in path.read_text().splitlines():
        if existing.split(":", 1)[0] == name:
            if existing != line:
                raise RuntimeError(f"{path} has {existing!r}, not {line!r}")
            return
    with open(path, "a") as database:
        database.write(line + "\n")


def main() -> int:
    return debian.script_main(rootfs_tar_path(), _build, "debootstrap needs it")


if __name__ == "__main__":
    sys.exit(main())
