"""What MPI a root filesystem holds: the host's (``/``, or the device root) or a container's.

Read from the files themselves, as the dynamic loader would find them: the library that
answers to ``libmpi.so.N`` or ``libmpich.so.N`` through the tree's ``/etc/ld.so.cache`` or its
library directories, its soname and needed libraries from its ELF dynamic section, and its
flavour and version from the identification strings every implementation compiles in (Open
MPI's ``v4.1.4``, MPICH's source directory ``mpich-4.0.2``, Intel MPI's banner), else from
the distribution's package database. Nothing is run: an image's programs cannot run on the
host, and a check must not start what it judges.

A container's tree is hostile input (safety rules 1 and 9): every path is resolved inside its
root with :mod:`ucore.storage.inroot` (a link to ``/usr/lib/...`` stays in the image; ``..`` stops
at the root), only regular files are opened, and at most :data:`MAX_LIBRARY` bytes of one are read.
The host's tree is read the same way, so a device root describes a whole synthetic host.
"""

from __future__ import annotations

import io
import itertools
import os
import re
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path
from typing import NamedTuple, Optional

from ucore.storage import inroot
from ucore_gpu import elf, ldcache

#: Where distributions put shared libraries, for a tree without a usable ``ld.so.cache``.
LIB_DIRS = (
    "/usr/local/lib",
    "/usr/lib/x86_64-linux-gnu",
    "/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/lib64",
    "/usr/lib",
    "/lib",
)
#: The largest prefix of a library read to identify it (Intel MPI's ``libmpi.so.12`` is
#: tens of MB; nothing legitimate puts its banner further in).
MAX_LIBRARY = 128 << 20
#: The MPI libraries a program links against, best first (``libmpi.so.12`` is the MPICH ABI
#: name that Intel MPI, MVAPICH and Cray share; Debian's MPICH is ``libmpich.so.12``).
MPI_SONAMES = ("libmpi.so.", "libmpich.so.")
#: ABI families: a program built against one member runs against another of the same soname.
MPICH_ABI = frozenset({"MPICH", "Intel MPI", "MVAPICH"})
_MAX_DPKG_STATUS = 64 << 20
_MAX_DIR_ENTRIES = 20000

#: (flavour, marker that must appear, version pattern), most specific first: MVAPICH and
#: Intel MPI carry MPICH's strings too.
_IDENT = (
    ("Intel MPI", b"Intel(R) MPI Library", rb"Intel\(R\) MPI Library (\d+(?:\.\d+)+|\d{4})"),
    ("MVAPICH", b"MVAPICH", rb"(?i:mvapich2?)[- ](\d+\.\d+(?:\.\d+)?[a-z0-9]*)"),
    ("Open MPI", b"Open MPI", rb"\0v(\d+\.\d+\.\d+[a-z0-9]*)\0"),
    ("MPICH", b"MPICH Version", rb"mpich-(\d+\.\d+(?:\.\d+)?[a-z0-9]*)"),
)
#: Distribution packages that hold each flavour's library, for a version the library hides.
_PACKAGES = {
    "Open MPI": ("libopenmpi3", "libopenmpi40", "libopenmpi2", "openmpi"),
    "MPICH": ("libmpich12", "mpich"),
    "MVAPICH": ("libmvapich2-12", "mvapich2"),
}
_PMIX_VERSION = re.compile(rb"(?:OpenPMIx|PMIx) v?(\d+\.\d+\.\d+[a-z0-9]*)")
_GLIBC_RELEASE = re.compile(rb"release version (\d+\.\d+)")
_GLIBC_SYMBOL = re.compile(rb"GLIBC_(2\.\d+(?:\.\d+)?)\0")


class Tree:
    """A root directory read as ``/`` without ever leaving it."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def canonical(self, path: str) -> Optional[str]:
        """``path`` with every link resolved inside the root, if all of it exists."""
        try:
            walk = inroot.resolve(self.root, path)
        except OSError:  # a loop of links, a component that cannot be opened
            return None
        return walk.path if walk.missing == 0 and not walk.blocked else None

    def read(self, path: str, limit: int) -> Optional[bytes]:
        try:
            return inroot.read_file(self.root, path, limit)
        except OSError:
            return None

    def listdir(self, path: str) -> list[str]:
        where = self.canonical(path)
        if where is None:
            return []
        try:
            fd = inroot.open_dir(self.root, [p for p in where.split("/") if p])
        except OSError:
            return []
        try:  # at most so many names: an image's directory can hold millions
            with os.scandir(fd) as entries:
                return sorted(e.name for e in itertools.islice(entries, _MAX_DIR_ENTRIES))
        except OSError:
            return []
        finally:
            os.close(fd)

    def real(self, canonical: str) -> str:
        """The host path of a canonical path in this tree (a mount's source)."""
        return canonical if str(self.root) == "/" else str(self.root) + canonical

    @cached_property
    def index(self) -> Index:
        """The tree's libraries, found once for the check and the bind."""
        return Index(self)


class Library(NamedTuple):
    soname: str
    #: Canonical inside its tree: the file itself, not a link to it.
    path: str
    needed: tuple[str, ...]

    @property
    def version(self) -> tuple[int, ...]:
        """The numbers after ``.so.`` in the file's name (``libucp.so.0.0.0``): how two
        copies of one soname compare."""
        _, _, tail = os.path.basename(self.path).partition(".so.")
        numbers = []
        for part in tail.split("."):
            if not part.isdigit():
                break
            numbers.append(int(part))
        return tuple(numbers)


class Mpi(NamedTuple):
    """An MPI library in a tree."""

    flavour: str
    version: Optional[str]
    library: Library
    #: The process-management interfaces its ranks can wire up through (``pmix``, ``pmi2``,
    #: ``pmi1``), as Slurm's ``--mpi=`` names them.
    pmi: tuple[str, ...]

    @property
    def family(self) -> str:
        return "MPICH" if self.flavour in MPICH_ABI else self.flavour

    @property
    def soname(self) -> str:
        return self.library.soname

    def describe(self) -> str:
        return f"{self.flavour} {self.version or '(version unknown)'} ({self.soname})"

    def series(self) -> Optional[tuple[int, ...]]:
        """(major, minor) of the version, when it is known."""
        if not self.version:
            return None
        numbers = re.findall(r"\d+", self.version)[:2]
        return tuple(int(n) for n in numbers) or None


class Side(NamedTuple):
    """What one tree offers an MPI job."""

    mpi: Optional[Mpi]
    #: The PMIx library's version ("" when present but unnamed), None when there is none.
    pmix: Optional[str]
    #: The C library's release (``2.36``), None for a tree without glibc (musl, static).
    glibc: Optional[str]


class Index:
    """The tree's shared libraries by soname, as its dynamic loader would find them: the
    linker cache first, then the usual directories."""

    def __init__(self, tree: Tree) -> None:
        self.tree = tree
        self.paths: dict[str, str] = {}
        data = tree.read("/etc/ld.so.cache", ldcache.MAX_SIZE + 1)
        for entry in ldcache.entries(data or b""):
            self.paths.setdefault(entry.soname, entry.path)
        for directory in LIB_DIRS:
            for name in tree.listdir(directory):
                if ".so." in name and name.startswith("lib"):
                    self.paths.setdefault(name, f"{directory}/{name}")
        self._libraries: dict[str, Optional[Library]] = {}

    def find(self, soname: str) -> Optional[Library]:
        if soname not in self._libraries:
            self._libraries[soname] = self._load(soname)
        return self._libraries[soname]

    def _load(self, soname: str) -> Optional[Library]:
        path = self.paths.get(soname)
        canonical = self.tree.canonical(path) if path else None
        if canonical is None:
            return None
        head = self.tree.read(canonical, 1 << 20)  # headers and the dynamic section
        if head is None:  # not a regular file: a FIFO or a device node planted as a library
            return None
        info = elf.dynamic(io.BytesIO(head))
        if info is None and len(head) == 1 << 20:  # tables past the first MiB
            data = self.tree.read(canonical, MAX_LIBRARY)
            info = elf.dynamic(io.BytesIO(data)) if data else None
        if info is None:
            return Library(soname, canonical, ())
        return Library(info.soname or soname, canonical, info.needed)

    def first(self, prefixes: Iterable[str]) -> Optional[Library]:
        """The library of the lowest-sorting soname with one of ``prefixes``, in their
        order (``libmpi.so.40`` before ``libmpich.so.12``)."""
        for prefix in prefixes:
            names = sorted(n for n in self.paths if n.startswith(prefix) and n[len(prefix) :])
            for name in names:
                found = self.find(name)
                if found is not None:
                    return found
        return None

    def closure(self, roots: Iterable[Library], skip: frozenset[str]) -> list[Library]:
        """``roots`` and every library they need, transitively, but ``skip``'s (a root
        without a soname, a component loaded by path, counts by its path)."""
        out: dict[str, Library] = {}
        pending = list(roots)[::-1]
        while pending:
            lib = pending.pop()
            key = lib.soname or lib.path
            if key in out or lib.soname in skip:
                continue
            out[key] = lib
            pending += [d for n in lib.needed if (d := self.find(n)) is not None]
        return list(out.values())


def identify(data: bytes) -> tuple[str, Optional[str]]:
    """(flavour, version) from a library's bytes; ``("unknown MPI", None)`` when no
    implementation's banner is in them."""
    for flavour, marker, pattern in _IDENT:
        if marker in data:
            found = re.search(pattern, data)
            return flavour, found.group(1).decode("ascii") if found else None
    return "unknown MPI", None


def pmi_support(
    flavour: str, data: bytes, library: Library, components: list[str]
) -> tuple[str, ...]:
    """The process-management interfaces an MPI library can wire up through."""
    found = []
    if flavour == "Open MPI" or any(n.startswith("libpmix.so.") for n in library.needed):
        found.append("pmix")  # Open MPI 2 and later: bundled or external PMIx
    if b"PMI2_" in data or "mca_pmix_s2.so" in components:
        found.append("pmi2")
    if b"cmd=init pmi_version" in data or "mca_pmix_s1.so" in components:
        found.append("pmi1")
    return tuple(found)


def component_dirs(tree: Tree, base: str) -> list[str]:
    """Directories in a library directory that hold what its libraries load at run time by
    path: Open MPI's components, PMIx's, the verbs providers, UCX's and libfabric's modules."""
    out = []
    for name in tree.listdir(base):
        if name in ("openmpi", "pmix", "pmix2", "libibverbs", "ucx", "libfabric"):
            path = f"{base}/{name}"
            if tree.canonical(path) == path:  # a real directory here, not a link elsewhere
                out.append(path)
    return out


def _components(tree: Tree, dirs: list[str]) -> list[str]:
    names: list[str] = []
    for top in dirs:
        for sub in ("", "/lib/openmpi3", "/lib/openmpi"):
            names += [n for n in tree.listdir(top + sub) if n.startswith("mca_")]
    return names


def dpkg_version(tree: Tree, packages: Iterable[str]) -> Optional[str]:
    """The upstream version of the first of ``packages`` installed per the dpkg database."""
    data = tree.read("/var/lib/dpkg/status", _MAX_DPKG_STATUS)
    if not data:
        return None
    for package in packages:
        pattern = (
            rb"(?m)^Package: "
            + re.escape(package.encode())
            + rb"\n(?:[^\n]+\n)*?Version: (?:\d+:)?([0-9][^-\s]*)"
        )
        found = re.search(pattern, data)
        if found:
            return found.group(1).decode("ascii", "replace")
    return None


def glibc_release(tree: Tree, index: Index) -> Optional[str]:
    libc = index.find("libc.so.6")
    data = tree.read(libc.path, MAX_LIBRARY) if libc else None
    if not data:
        return None
    found = _GLIBC_RELEASE.search(data)
    if found:
        return found.group(1).decode("ascii")
    versions = _GLIBC_SYMBOL.findall(data)
    return max(versions, key=version_key).decode("ascii") if versions else None


def glibc_needed(data: bytes) -> Optional[str]:
    """The newest ``GLIBC_2.N`` symbol version a library's bytes name."""
    versions = _GLIBC_SYMBOL.findall(data)
    return max(versions, key=version_key).decode("ascii") if versions else None


def version_key(text: str | bytes) -> tuple[int, ...]:
    raw = text.decode("ascii", "replace") if isinstance(text, bytes) else text
    return tuple(int(n) for n in re.findall(r"\d+", raw))


def mpi_of(tree: Tree, index: Index) -> Optional[Mpi]:
    library = index.first(MPI_SONAMES)
    if library is None:
        return None
    data = tree.read(library.path, MAX_LIBRARY) or b""
    flavour, version = identify(data)
    if version is None:
        version = dpkg_version(tree, _PACKAGES.get(flavour, ()))
    components = _components(tree, component_dirs(tree, os.path.dirname(library.path)))
    return Mpi(flavour, version, library, pmi_support(flavour, data, library, components))


def pmix_of(tree: Tree, index: Index) -> Optional[str]:
    library = index.first(("libpmix.so.",))
    if library is None:
        return None
    found = _PMIX_VERSION.search(tree.read(library.path, MAX_LIBRARY) or b"")
    return found.group(1).decode("ascii") if found else ""


def side(tree: Tree) -> Side:
    """What ``tree`` offers an MPI job."""
    index = tree.index
    return Side(mpi_of(tree, index), pmix_of(tree, index), glibc_release(tree, index))
