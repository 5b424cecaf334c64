"""``run --mpi=host``: the image's MPI program runs on the host's MPI and fabric libraries.

Sarus's approach for the hybrid model: a site's MPI is built for its fabric (UCX, libfabric,
verbs, PSM2) and its launcher, which an image's generic MPI is not. Where the two are
ABI-compatible (the same family and soname, the host's release no older than the image's,
and the image's C library new enough for the host's libraries), each host library replaces
the image's copy of the same soname by a read-only bind over that file, so a program whose
``RPATH`` names the image's directory gets it too; what the image lacks or has older lands
in :data:`LIB`, first on ``LD_LIBRARY_PATH``. What the libraries load by path at run time
(Open MPI's and PMIx's components, the verbs providers, UCX's and libfabric's modules, their
help texts and default parameters) is bound at the host's own paths, where the host's
libraries look for it. Everything is transient and read-only; nothing of the image changes.

Incompatible pairs are refused before anything starts (exit 9), with what differs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Optional

from ucore.values.errors import DeviceError
from ucore.values.model import Mount, Preparation
from ucore_gpu import mpiinfo
from ucore_gpu.mpiinfo import Index, Library, Side, Tree

PRIVATE = "/usr/local/ucore-mpi"
LIB = f"{PRIVATE}/lib"
#: The C library's own objects: always the image's, which its loader belongs to.
GLIBC = frozenset(
    {
        "libc.so.6",
        "libm.so.6",
        "libpthread.so.0",
        "libdl.so.2",
        "librt.so.1",
        "libresolv.so.2",
        "libutil.so.1",
        "libanl.so.1",
        "libnsl.so.1",
        "ld-linux-x86-64.so.2",
        "ld-linux-aarch64.so.1",
        "ld64.so.2",
    }
)
#: The MPI implementation's own libraries: the host's replace the image's whatever their
#: version, or the image's program would mix two MPIs.
MPI_OWN = ("libmpi", "libopen-", "libmca_common", "liboshmem", "libompitrace", "libmpich")
#: Fabric and process-management libraries an MPI loads by name at run time.
FABRIC = (
    "libfabric.so.",
    "libucp.so.",
    "libuct.so.",
    "libucs.so.",
    "libucm.so.",
    "libucs_signal.so.",
    "libibverbs.so.",
    "librdmacm.so.",
    "libpsm2.so.",
    "libpmix.so.",
)
#: Read-only data the host's MPI opens by its configured path: help texts, default parameters.
DATA_DIRS = ("/etc/openmpi", "/usr/share/openmpi", "/usr/share/pmix", "/etc/libibverbs.d")


def refusal(host: Side, image: Side) -> Optional[str]:
    """Why the host's MPI cannot replace the image's, or None when it can (the C library is
    checked with the libraries chosen, in :func:`bindings`)."""
    if host.mpi is None:
        return "the host has no MPI library to bind (no libmpi.so or libmpich.so found)"
    if image.mpi is None:
        return (
            "the image has no MPI library for the host's to replace (no libmpi.so or"
            " libmpich.so in its library path)"
        )
    h, i = host.mpi, image.mpi
    if h.family != i.family:
        return f"the image has {i.describe()}; the host has {h.describe()}: not ABI-compatible"
    if _major(h.soname) != _major(i.soname):
        return f"the image's {i.describe()} and the host's {h.describe()} differ in ABI version"
    hs, is_ = h.series(), i.series()
    if h.flavour == i.flavour and hs is not None and is_ is not None and hs < is_:
        return f"the host's {h.describe()} is older than the image's {i.describe()}"
    if image.glibc is None:
        return "the image has no glibc, which the host's MPI libraries need"
    return None


def _major(soname: str) -> str:
    return soname.partition(".so.")[2].split(".")[0]


def bindings(
    host_tree: Tree, host: Side, image_tree: Tree, image: Side, env: Mapping[str, str]
) -> Preparation:
    """The mounts and environment that put the host's MPI under the image's program.

    :raises DeviceError: the two are not compatible (exit 9), nothing was started.
    """
    why = refusal(host, image)
    if why is not None:
        raise DeviceError(f"--mpi=host: {why}")
    assert host.mpi is not None and image.glibc is not None
    host_index, image_index = host_tree.index, image_tree.index
    libraries = [host.mpi.library]
    libraries += [lib for p in FABRIC if (lib := host_index.first((p,))) is not None]
    dirs: list[str] = []
    for directory in dict.fromkeys(os.path.dirname(lib.path) for lib in libraries):
        dirs += mpiinfo.component_dirs(host_tree, directory)
    dirs = [d for d in dirs if not any(d.startswith(o + "/") for o in dirs)]  # outermost
    components = [c for d in dirs for c in _loaded_from(host_tree, d)]
    closure = host_index.closure([*libraries, *components], GLIBC)
    chosen = [lib for lib in closure if lib.soname and _wanted(lib, image_index)]
    checked = [*chosen, *components]
    needs = max(
        (v for lib in checked if (v := _glibc_needed(host_tree, lib))),
        key=mpiinfo.version_key,
        default=None,
    )
    if needs and mpiinfo.version_key(needs) > mpiinfo.version_key(image.glibc):
        raise DeviceError(
            f"--mpi=host: the host's MPI libraries need glibc {needs}; the image has"
            f" glibc {image.glibc}"
        )
    mounts: dict[str, Mount] = {}
    private = False
    for lib in chosen:
        source = host_tree.real(lib.path)
        theirs = image_index.find(lib.soname)
        if theirs is not None:
            mounts.setdefault(theirs.path, Mount(source, theirs.path, True, True))
        else:
            private = True
            target = f"{LIB}/{lib.soname}"
            mounts.setdefault(target, Mount(source, target, True, True))
    for path in [*dirs, *DATA_DIRS]:
        if host_tree.canonical(path) == path:
            mounts.setdefault(path, Mount(host_tree.real(path), path, True, True))
    added: dict[str, str] = {}
    if private:
        parts = [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p and p != LIB]
        added["LD_LIBRARY_PATH"] = ":".join([LIB, *parts])
    return {"mounts": list(mounts.values()), "env": added}


def _wanted(lib: Library, image_index: Index) -> bool:
    """The host's copy goes in: the MPI's own, or one the image lacks or has older."""
    if lib.soname.startswith(MPI_OWN):
        return True
    theirs = image_index.find(lib.soname)
    return theirs is None or theirs.version < lib.version


def _loaded_from(tree: Tree, top: str) -> list[Library]:
    """The components under ``top`` (two levels: Open MPI keeps them in ``lib/openmpi3``)
    as libraries, for what they need."""
    out = []
    pending = [top]
    for depth in range(3):
        deeper = []
        for directory in pending:
            for name in tree.listdir(directory):
                path = f"{directory}/{name}"
                if name.endswith(".so") or ".so." in name:
                    lib = _component(tree, path)
                    if lib is not None:
                        out.append(lib)
                elif depth < 2 and tree.canonical(path) == path and "." not in name:
                    deeper.append(path)
        pending = deeper
    return out


def _component(tree: Tree, path: str) -> Optional[Library]:
    import io

    from ucore_gpu import elf

    head = tree.read(path, 1 << 20)
    info = elf.dynamic(io.BytesIO(head)) if head else None
    if info is None:
        return None
    return Library("", path, info.needed)  # loaded by path: no soname to be found by


def _glibc_needed(tree: Tree, lib: Library) -> Optional[str]:
    data = tree.read(lib.path, mpiinfo.MAX_LIBRARY)
    return mpiinfo.glibc_needed(data) if data else None
