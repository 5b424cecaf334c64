"""What the ucore-proot and ucore-fakechroot wheels carry, and how it is taken from Debian.

A cluster user often has pip and nothing else: no ``proot`` or ``fakechroot`` package, and no
administrator to install one. udocker downloads a tarball of tools at first use; ucore's wheels
carry the engines instead, so a ``pip install`` is all it takes and nothing is fetched at run
time. The binaries are Debian's own builds, not ours:

* ``apt-get download`` fetches each package from a suite's signed index, with a private apt
  state (no root, nothing of the host's apt changed). The ``.deb``'s SHA-256 is then checked
  against the index's ``SHA256`` field again here, so a tampered cache or mirror stops the
  build rather than shipping.
* ``dpkg-deb -x`` unpacks it; only the named files are taken, plus the package's copyright
  file (the licence) and where its source is (``apt-get source PACKAGE=VERSION``).
* Host-run binaries get a ``$ORIGIN``-relative run path (DT_RPATH, which ``LD_LIBRARY_PATH``
  cannot override) so that ``bin/proot`` finds ``lib/libtalloc.so.2`` wherever pip put it.
* Every ELF file's needed ``GLIBC_2.N`` versions are read (``readelf -V``) and written to
  ``carried/CARRIED.json`` with the rest; the wheel's platform tag follows from the files the
  host runs (see :func:`platform_tag`).

Files are either ``host``-run (proot and its libtalloc: the host's glibc loads them, so they
set the wheel's manylinux floor) or ``container``-side (libfakechroot: preloaded into the
image's programs by the image's own loader, so the *image's* glibc must serve it; the engine
checks that at run time and the host's glibc never loads them).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

#: The Debian archive and its signing keys (package debian-archive-keyring).
MIRROR = os.environ.get("UCORE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
MANIFEST = "CARRIED.json"
#: manylinux2014 (CentOS/RHEL 7): the oldest floor pip still installs from PyPI's tags.
MANYLINUX_MIN = (2, 17)


@dataclass(frozen=True)
class Piece:
    """Files taken from one Debian package of one suite."""

    package: str
    suite: str
    #: path inside the .deb (``*`` for the multiarch folder) -> path under carried/
    files: dict[str, str]
    #: "host": run by the host (sets the wheel's glibc floor); "container": loaded into the
    #: image's programs, checked against the image's glibc at run time.
    role: str = "host"
    #: carried/ path -> run path to set (``$ORIGIN``-relative).
    rpath: dict[str, str] = field(default_factory=dict)


#: distribution directory name -> (its Python package, what it carries)
RECIPES: dict[str, tuple[str, tuple[Piece, ...]]] = {
    "proot": (
        "ucore_proot",
        (
            Piece(
                "proot",
                "bookworm",
                {"usr/bin/proot": "bin/proot"},
                rpath={"bin/proot": "$ORIGIN/../lib"},
            ),
            Piece(
                "libtalloc2",
                "bookworm",
                {"usr/lib/*/libtalloc.so.2": "lib/libtalloc.so.2"},
            ),
        ),
    ),
    # One build per suite: each serves the images whose glibc lies between its floor and the
    # glibc it was built for (see ucore_fakechroot.library).
    "fakechroot": (
        "ucore_fakechroot",
        tuple(
            Piece(
                "libfakechroot",
                suite,
                {"usr/lib/*/fakechroot/libfakechroot.so": f"{suite}/libfakechroot.so"},
                role="container",
            )
            for suite in ("bullseye", "bookworm", "trixie")
        ),
    ),
}


class CarryError(RuntimeError):
    """A step of taking the files failed; the message says which and why."""


def run(argv: list[str], cwd: Path | None = None) -> str:
    result = subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL
    )
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise CarryError(f"{' '.join(argv[:3])} ...: exit {result.returncode}: {' / '.join(tail)}")
    return result.stdout


class Apt:
    """apt-get and apt-cache over a private state holding one suite's index."""

    def __init__(self, state: Path, suite: str, architecture: str) -> None:
        self.suite = suite
        for sub in ("lists/partial", "cache/archives/partial"):
            (state / sub).mkdir(parents=True, exist_ok=True)
        sources = state / "sources.list"
        sources.write_text(f"deb [signed-by={KEYRING}] {MIRROR} {suite} main\n")
        self.options = [
            f"-oDir::Etc::SourceList={sources}",
            "-oDir::Etc::SourceParts=/dev/null",
            f"-oDir::State::Lists={state / 'lists'}",
            f"-oDir::Cache={state / 'cache'}",
            "-oDir::State::status=/dev/null",
            f"-oAPT::Architecture={architecture}",
            "-oAPT::Architectures=",
            "-oDebug::NoLocking=true",
        ]
        if os.geteuid() == 0:  # apt's sandbox user must be able to read what it fetches
            os.chmod(state, 0o755)
        run(["apt-get", *self.options, "-qq", "update"])

    def record(self, package: str) -> dict[str, str]:
        """The index's fields of the package's version in this suite."""
        text = run(["apt-cache", *self.options, "show", "--no-all-versions", package])
        fields: dict[str, str] = {}
        for line in text.split("\n\n")[0].splitlines():
            name, sep, value = line.partition(": ")
            if sep and not line.startswith(" "):
                fields[name] = value.strip()
        if "Version" not in fields or "SHA256" not in fields:
            raise CarryError(f"{package}: not in {self.suite}")
        return fields

    def download(self, package: str, version: str, into: Path) -> Path:
        if os.geteuid() == 0:
            os.chmod(into, 0o777)
        run(["apt-get", *self.options, "-qq", "download", f"{package}={version}"], cwd=into)
        (deb,) = into.glob(f"{package}_*.deb")
        return deb


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def glibc_needed(path: Path) -> tuple[int, int]:
    """The newest GLIBC_2.N version the ELF file ``path`` needs (``readelf -V``)."""
    text = run(["readelf", "-V", "-W", str(path)])
    needed = text.partition("Version needs section")[2]
    found = [(int(a), int(b)) for a, b in re.findall(r"Name: GLIBC_(\d+)\.(\d+)", needed)]
    return max(found, default=(2, 0))


def dotted(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


def upstream(version: str) -> tuple[int, int]:
    """(2, 36) from a Debian libc6 version such as ``2.36-9+deb12u13``."""
    found = re.match(r"(?:\d+:)?(\d+)\.(\d+)", version)
    if not found:
        raise CarryError(f"unexpected libc6 version {version}")
    return int(found.group(1)), int(found.group(2))


def platform_tag(host_floor: tuple[int, int], machine: str) -> str:
    """The wheel's platform tag: PEP 600's ``manylinux_2_N`` for the host-run files' floor,
    never below manylinux2014, with the legacy alias pip < 20.3 understands at 2.17."""
    floor = max(host_floor, MANYLINUX_MIN)
    tag = f"manylinux_{floor[0]}_{floor[1]}_{machine}"
    return f"{tag}.manylinux2014_{machine}" if floor == MANYLINUX_MIN else tag


def carry(distribution: str, package_dir: Path, work: Path) -> dict[str, object]:
    """Put the recipe's files under ``package_dir/carried`` and return the manifest written
    there."""
    package, pieces = RECIPES[distribution]
    architecture = run(["dpkg", "--print-architecture"]).strip()
    machine = os.uname().machine
    apts = {s: Apt(work / f"apt-{s}", s, architecture) for s in {p.suite for p in pieces}}
    target = package_dir / "carried"
    shutil.rmtree(target, ignore_errors=True)
    (target / "licenses").mkdir(parents=True)
    entries = []
    host_floor = (2, 0)
    for piece in pieces:
        apt = apts[piece.suite]
        fields = apt.record(piece.package)
        scratch = Path(tempfile.mkdtemp(dir=work))
        deb = apt.download(piece.package, fields["Version"], scratch)
        if sha256(deb) != fields.get("SHA256"):
            raise CarryError(f"{deb.name}: SHA-256 differs from the {piece.suite} index's")
        tree = scratch / "tree"
        run(["dpkg-deb", "-x", str(deb), str(tree)])
        files = {}
        for pattern, dest in piece.files.items():
            matches = sorted(tree.glob(pattern))
            if len(matches) != 1:
                raise CarryError(f"{deb.name}: {len(matches)} files match {pattern}, not one")
            inside = str(matches[0].relative_to(tree))
            source = matches[0].resolve()
            if not source.is_file() or not source.is_relative_to(tree.resolve()):
                raise CarryError(f"{deb.name}: {inside} is not a file of the package")
            out = target / dest
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, out)
            out.chmod(0o755 if piece.role == "host" and dest.startswith("bin/") else 0o644)
            if dest in piece.rpath:
                run(["patchelf", "--force-rpath", "--set-rpath", piece.rpath[dest], str(out)])
            needed = glibc_needed(out)
            if piece.role == "host":
                host_floor = max(host_floor, needed)
            files[dest] = {"from": "/" + inside, "glibc": dotted(needed)}
        copyright_file = tree / "usr/share/doc" / piece.package / "copyright"
        licence = f"licenses/{piece.package}-{piece.suite}.copyright"
        shutil.copyfile(copyright_file, target / licence)
        source, _, source_version = fields.get("Source", piece.package).partition(" ")
        source_version = source_version.strip("()") or fields["Version"]
        entries.append(
            {
                "package": piece.package,
                "version": fields["Version"],
                "suite": piece.suite,
                "architecture": fields.get("Architecture", architecture),
                "sha256": fields["SHA256"],
                "role": piece.role,
                # What it was built for: an F mode's libfakechroot serves images up to it.
                "suite_glibc": dotted(upstream(apt.record("libc6")["Version"])),
                "files": files,
                "license": licence,
                "source": f"Debian source package {source} {source_version}"
                f" (apt-get source {source}={source_version})",
            }
        )
        shutil.rmtree(scratch)
    manifest: dict[str, object] = {
        "distribution": f"ucore-{distribution}",
        "python_package": package,
        "machine": machine,
        "host_glibc_floor": dotted(host_floor),
        "platform_tag": platform_tag(host_floor, machine),
        "packages": entries,
    }
    (target / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
