"""The Debian test image is what the Fakechroot (F1-F4) conformance runs rely on: a glibc root
with its dynamic loader, ``libc.so.6`` and the absolute symlinks of a real distribution, as
``debootstrap`` made them, and no device nodes. A cheap guard, so that a broken image fails
here, in one place, rather than as every engine test at once."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from support.cli import Ucore


def test_debian_image_has_glibc_and_absolute_symlinks(ucore_cli: Ucore, debian_image: str) -> None:
    ucore_cli.ok("pull", debian_image)
    ucore_cli.ok("create", "--name", "debian", debian_image)
    root = Path(ucore_cli.ok("inspect", "-p", "debian").stdout.strip())

    libdir = root / "usr" / "lib" / "x86_64-linux-gnu"
    for name in ("ld-linux-x86-64.so.2", "libc.so.6"):
        assert (libdir / name).is_file(), f"{name} missing in {libdir}"
    # Through the image's own relative lib64 -> usr/lib64, to a link debootstrap made absolute:
    # the kind Fakechroot's modes must rewrite, so it must reach them unchanged.
    link = root / "lib64" / "ld-linux-x86-64.so.2"
    assert os.readlink(link) == "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    assert os.readlink(root / "bin") == "usr/bin"  # merged /usr, relative as shipped
    assert os.readlink(root / "etc" / "alternatives" / "awk").startswith("/")

    dev = root / "dev"
    assert dev.is_dir()
    assert [p.name for p in dev.iterdir()] == []  # no device nodes (nor links to /proc)
    for sub in ("proc", "sys"):
        assert stat.S_ISDIR((root / sub).lstat().st_mode)
