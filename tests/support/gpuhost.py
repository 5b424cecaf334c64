"""A synthetic NVIDIA GPU + InfiniBand host, laid out under a directory, for GPU plugin tests.

The GPU plugin discovers devices under a *device root* (``UCORE_DEVICE_ROOT=DIR``): a directory
it treats as ``/`` of the host, prefixing every host-style path a source reports (``/dev/nvidia0``,
``/usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15``, entries of ``/etc/ld.so.cache``, paths in
CDI specs and in ``nvidia-container-cli list``) with it. :func:`build_host` writes such a root,
looking the way a driver installation looks to the files the plugin reads, so tests need
neither a GPU nor root:

- ``/proc/driver/nvidia``: ``version``, one ``gpus/<bus id>/information`` per GPU (and, with
  ``mig=True``, the ``capabilities`` files and ``/proc/driver/nvidia-caps/mig-minors``);
- ``/dev``: the GPU and control "nodes" as regular 0666 files (no ``mknod``: the tests run
  unprivileged too); each ``/dev/nvidiaN`` holds its GPU's UUID, so a process in a container
  can tell which GPUs it was given by reading them;
- the driver's libraries, compiled with the host's ``cc`` into real shared objects with the
  real sonames: ``libcuda`` and ``libnvidia-ml`` count the ``/dev/nvidia<N>`` files they can
  open (honouring ``CUDA_VISIBLE_DEVICES`` as CUDA does), so a program in a container that
  ``dlopen``\\ s them reports the GPUs the engine injected; a stale older driver's copies in
  ``/usr/lib64`` report 99 devices, so a test notices when they were loaded instead;
- ``/etc/ld.so.cache``, written here in glibc's format by a scanner that follows ``ldconfig``'s
  rules (checked against the real ``ldconfig`` in ``tests/test_gpuhost.py``);
- utilities (``nvidia-smi`` as a ``/bin/sh`` script that runs in a busybox container), ICD
  files, and InfiniBand: ``/dev/infiniband``, its sysfs classes and the verbs userspace.

:func:`cdi_spec` / :func:`write_cdi_spec` describe the host as ``nvidia-ctk cdi generate`` would,
:func:`fake_container_cli` adds an ``nvidia-container-cli`` that lists it as the real one does,
and :func:`gpu_image_tags` builds a glibc image whose ``cudaquery``/``nvmlquery`` programs load
the injected libraries. Everything is deterministic; compiled objects and images are built once
per process.

Test-only knob: ``SYNTHETIC_NVIDIA_DEV_DIR`` makes the libraries and ``nvidia-smi`` scan another
directory than ``/dev``, so their counting can be checked on the host without a container.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import json
import os
import platform
import re
import shutil
import stat
import struct
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple, Optional

from ucore.testing.images import (
    DEFAULT_PATH,
    Image,
    LayerBuilder,
    build_image,
    busybox_layer_tar,
    make_layer,
)

#: Where the driver installs its libraries (Debian/Ubuntu multiarch) and where the stale copy is.
LIBDIR = "/usr/lib/x86_64-linux-gnu"
STALE_LIBDIR = "/usr/lib64"
MODEL = "NVIDIA H200"
#: Control nodes in the order ``nvidia-container-cli list`` prints them.
CONTROL_NODES = (
    "/dev/nvidiactl",
    "/dev/nvidia-uvm",
    "/dev/nvidia-uvm-tools",
    "/dev/nvidia-modeset",
)
#: Environment variable that points the synthetic libraries and ``nvidia-smi`` at another
#: directory than ``/dev`` (tests on the host only; containers never set it).
DEV_DIR_ENV = "SYNTHETIC_NVIDIA_DEV_DIR"
#: CUDA version the stale driver's libcuda reports, and the count it reports whatever the host.
STALE_CUDA = 12020
STALE_COUNT = 99
CONTAINER_CLI_VERSION = "1.14.6"

#: Driver libraries as (file name stem, soname or None for "the full file name"), in the order
#: libnvidia-container's tables (utility, compute, graphics, glvnd) list them.
DRIVER_LIBS: tuple[tuple[str, Optional[str]], ...] = (
    ("libnvidia-ml.so", "libnvidia-ml.so.1"),
    ("libcuda.so", "libcuda.so.1"),
    ("libnvidia-opencl.so", "libnvidia-opencl.so.1"),
    ("libnvidia-gpucomp.so", None),
    ("libnvidia-ptxjitcompiler.so", "libnvidia-ptxjitcompiler.so.1"),
    ("libnvidia-nvvm.so", "libnvidia-nvvm.so.4"),
    ("libnvidia-eglcore.so", None),
    ("libGLX_nvidia.so", "libGLX_nvidia.so.0"),
    ("libEGL_nvidia.so", "libEGL_nvidia.so.0"),
)
BINARIES = ("/usr/bin/nvidia-smi", "/usr/bin/nvidia-debugdump")

#: PCI bus ids of an 8-GPU HGX H200 board; more GPUs continue on another domain.
_GPU_BUSES = (
    "0000:1b:00.0",
    "0000:43:00.0",
    "0000:52:00.0",
    "0000:61:00.0",
    "0000:9d:00.0",
    "0000:c3:00.0",
    "0000:d1:00.0",
    "0000:df:00.0",
)
MAX_GPUS = 64  # the synthetic libraries' table size

_PROC_VERSION = (
    "NVRM version: NVIDIA UNIX x86_64 Kernel Module  {driver}  Tue Mar  5 22:23:56 UTC 2024\n"
    "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14) \n"
)


# --------------------------------------------------------------------------------------------
# The host description


class MigDevice(NamedTuple):
    """One MIG device (GPU instance ``gi``, compute instance ``ci``) of GPU ``gpu``, with the
    capability files that grant it and the ``/dev/nvidia-caps`` nodes they name (host-style)."""

    gpu: int
    gi: int
    ci: int
    uuid: str
    gi_access: str
    ci_access: str
    gi_node: str
    ci_node: str


@dataclass(frozen=True)
class GpuHost:
    """What :func:`build_host` laid out under ``root``; every path here is host-style."""

    root: Path
    driver: str
    cuda: int
    #: GPU UUIDs and PCI bus ids in index order (index == device minor == PCI order).
    uuids: list[str]
    pci: list[str]
    #: (name, PCI address) per HCA, in uverbs/umad index order.
    hcas: list[tuple[str, str]]
    stale_driver: str
    mig: bool
    mig_devices: list[MigDevice]
    #: The driver's library files (versioned names) in ``LIBDIR``, in nvidia-container-cli order.
    libraries: list[str]
    #: The stale driver's library files in ``STALE_LIBDIR``.
    stale_libraries: list[str]
    binaries: list[str]
    control_nodes: list[str]
    #: ``/dev/infiniband/...`` files: uverbs/umad/issm per HCA, then ``rdma_cm``.
    ib_nodes: list[str]

    @property
    def gpu_nodes(self) -> list[str]:
        return [f"/dev/nvidia{i}" for i in range(len(self.uuids))]

    @property
    def cuda_version(self) -> str:
        """``12040`` as CUDA prints it: ``12.4``."""
        return f"{self.cuda // 1000}.{self.cuda % 1000 // 10}"

    @property
    def env(self) -> dict[str, str]:
        """Environment that points the plugin at this host."""
        return {"UCORE_DEVICE_ROOT": str(self.root)}

    def path(self, host_path: str) -> Path:
        """Where a host-style absolute path lies in this tree."""
        return self.root / host_path.lstrip("/")


def gpu_uuid(index: int) -> str:
    """A deterministic, distinct ``GPU-…`` UUID for GPU ``index`` (random-looking, so that no
    two share a short prefix by construction)."""
    return "GPU-" + _uuid_text(hashlib.sha256(f"ucore synthetic gpu {index}".encode()).hexdigest())


def mig_uuid(gpu: int, gi: int, ci: int) -> str:
    seed = f"ucore synthetic mig {gpu}/{gi}/{ci}".encode()
    return "MIG-" + _uuid_text(hashlib.sha256(seed).hexdigest())


def _uuid_text(hexdigest: str) -> str:
    h = hexdigest
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def gpu_bus_id(index: int) -> str:
    if index < len(_GPU_BUSES):
        return _GPU_BUSES[index]
    return f"{index // 256 + 1:04x}:{index % 256:02x}:00.0"


def _root_port(pci: str) -> str:
    """``pci0000:3a`` for ``0000:3b:00.0``: the host bridge above the device, as sysfs names it."""
    domain, bus = pci.split(":")[:2]
    return f"pci{domain}:{max(int(bus, 16) - 1, 0):02x}"


# --------------------------------------------------------------------------------------------
# Compiling: each distinct source and flag set once per process


_cache_dir: Optional[Path] = None


def _compile_dir() -> Path:
    global _cache_dir
    if _cache_dir is None:
        _cache_dir = Path(tempfile.mkdtemp(prefix="ucore-gpuhost-cc-"))
        atexit.register(shutil.rmtree, str(_cache_dir), True)
    return _cache_dir


def compile_c(source: str, flags: Sequence[str]) -> Path:
    """The host ``cc``'s output for ``source`` with ``flags``, compiled once per process (many
    tests build hosts; compiling is most of the cost). The source goes in on stdin, so no file
    name lands in the object and the bytes depend on source, flags and compiler only.

    The returned file is shared: copy it, never modify it.
    """
    cc = shutil.which("cc")
    if cc is None:
        raise RuntimeError("no C compiler (cc): install gcc to build the synthetic GPU host")
    key = hashlib.sha256(json.dumps([cc, list(flags), source]).encode()).hexdigest()[:32]
    out = _compile_dir() / key
    if not out.exists():
        tmp = out.with_name(key + ".tmp")
        result = subprocess.run(
            [cc, *flags, "-o", str(tmp), "-x", "c", "-"],
            input=source,
            text=True,
            capture_output=True,
        )
        if result.returncode != 0:
            raise RuntimeError(f"cc {' '.join(flags)} failed:\n{result.stderr}")
        os.replace(tmp, out)
    return out


def shared_object(source: str, soname: Optional[str], defines: Sequence[str] = ()) -> Path:
    flags = ["-shared", "-fPIC", "-O2", "-s", "-Wl,-z,noexecstack", *defines]
    if soname:
        flags.append(f"-Wl,-soname,{soname}")
    return compile_c(source, flags)


def program(name: str) -> Path:
    """``cudaquery`` or ``nvmlquery`` compiled for this host (dynamic, glibc), to run on the host
    (``LD_LIBRARY_PATH=<root>/usr/lib/x86_64-linux-gnu``) or in :func:`gpu_image`."""
    sources = {"cudaquery": _CUDAQUERY_C, "nvmlquery": _NVMLQUERY_C}
    return compile_c(sources[name], ["-O2", "-s"])


_DEVICES_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define UC_MAX 64

struct uc_dev { unsigned long minor; char uuid[128]; };

/* Every /dev/nvidia<minor> this process can open, in minor order, with its UUID (the
   synthetic node's content): what a container was given, as the real driver sees it. Like
   the real driver, it opens the nodes by minor number rather than listing /dev: an engine
   may show a bound node without listing it (PRoot binds a file into a directory it cannot
   write as a user). */
static int uc_open_devices(struct uc_dev *devs)
{
    const char *dir = getenv("SYNTHETIC_NVIDIA_DEV_DIR");
    if (dir == NULL || *dir == '\0')
        dir = "/dev";
    int n = 0;
    for (unsigned long minor = 0; minor < UC_MAX; minor++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/nvidia%lu", dir, minor);
        int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
        if (fd < 0)
            continue;
        ssize_t r = read(fd, devs[n].uuid, sizeof devs[n].uuid - 1);
        close(fd);
        if (r < 0)
            r = 0;
        devs[n].uuid[r] = '\0';
        while (r > 0 && (devs[n].uuid[r - 1] == '\n' || devs[n].uuid[r - 1] == ' '))
            devs[n].uuid[--r] = '\0';
        devs[n].minor = minor;
        n++;
    }
    return n;
}

/* CUDA's reading of CUDA_VISIBLE_DEVICES: tokens in order, each an index into the devices it
   opened or a unique prefix of a GPU-... UUID; the first token that selects nothing ends the
   list. The count is the number of distinct devices selected. */
static int uc_visible_count(void)
{
    struct uc_dev devs[UC_MAX];
    int n = uc_open_devices(devs);
    const char *env = getenv("CUDA_VISIBLE_DEVICES");
    if (env == NULL)
        return n;
    char chosen[UC_MAX] = {0};
    int count = 0;
    const char *tok = env;
    for (;;) {
        const char *end = strchr(tok, ',');
        size_t len = end ? (size_t)(end - tok) : strlen(tok);
        while (len > 0 && *tok == ' ') {
            tok++;
            len--;
        }
        while (len > 0 && tok[len - 1] == ' ')
            len--;
        int idx = -1;
        if (len > 0 && strspn(tok, "0123456789") >= len) {
            unsigned long v = strtoul(tok, NULL, 10);
            if (len < 10 && v < (unsigned long)n)
                idx = (int)v;
        } else if (len > 4 && strncmp(tok, "GPU-", 4) == 0) {
            for (int i = 0; i < n; i++) {
                if (strncmp(devs[i].uuid, tok, len) == 0) {
                    if (idx >= 0) {
                        idx = -1; /* ambiguous prefix selects nothing */
                        break;
                    }
                    idx = i;
                }
            }
        }
        if (idx < 0)
            break;
        if (!chosen[idx]) {
            chosen[idx] = 1;
            count++;
        }
        if (end == NULL)
            break;
        tok = end + 1;
    }
    return count;
}
"""

_LIBCUDA_C = (
    _DEVICES_C
    + r"""
#ifndef UC_CUDA_VERSION
#define UC_CUDA_VERSION 12040
#endif

int cuInit(unsigned int flags)
{
    (void)flags;
    return 0;
}

int cuDriverGetVersion(int *version)
{
    if (version == NULL)
        return 1; /* CUDA_ERROR_INVALID_VALUE */
    *version = UC_CUDA_VERSION;
    return 0;
}

int cuDeviceGetCount(int *count)
{
    if (count == NULL)
        return 1;
#ifdef UC_FIXED_COUNT
    *count = UC_FIXED_COUNT;
#else
    *count = uc_visible_count();
#endif
    return 0;
}
"""
)

_LIBNVML_C = (
    _DEVICES_C
    + r"""
#ifndef UC_DRIVER_VERSION
#define UC_DRIVER_VERSION "550.54.15"
#endif
#ifndef UC_CUDA_VERSION
#define UC_CUDA_VERSION 12040
#endif

int nvmlInit_v2(void) { return 0; }
int nvmlInit(void) { return 0; }
int nvmlShutdown(void) { return 0; }

int nvmlSystemGetDriverVersion(char *version, unsigned int length)
{
    if (version == NULL)
        return 2; /* NVML_ERROR_INVALID_ARGUMENT */
    if (length < sizeof UC_DRIVER_VERSION)
        return 7; /* NVML_ERROR_INSUFFICIENT_SIZE */
    memcpy(version, UC_DRIVER_VERSION, sizeof UC_DRIVER_VERSION);
    return 0;
}

int nvmlSystemGetCudaDriverVersion(int *version)
{
    if (version == NULL)
        return 2;
    *version = UC_CUDA_VERSION;
    return 0;
}

int nvmlDeviceGetCount_v2(unsigned int *count)
{
    if (count == NULL)
        return 2;
#ifdef UC_FIXED_COUNT
    *count = UC_FIXED_COUNT;
#else
    *count = (unsigned int)uc_visible_count();
#endif
    return 0;
}
"""
)

_STUB_C = "int ucore_synthetic_stub(void) { return 0; }\n"

_CUDAQUERY_C = r"""
#include <dlfcn.h>
#include <stddef.h>
#include <stdio.h>

int main(void)
{
    void *h = dlopen("libcuda.so.1", RTLD_NOW);
    if (h == NULL) {
        fprintf(stderr, "cudaquery: %s\n", dlerror());
        return 3;
    }
    int (*init)(unsigned int) = (int (*)(unsigned int))dlsym(h, "cuInit");
    int (*count)(int *) = (int (*)(int *))dlsym(h, "cuDeviceGetCount");
    int (*version)(int *) = (int (*)(int *))dlsym(h, "cuDriverGetVersion");
    if (init == NULL || count == NULL || version == NULL) {
        fprintf(stderr, "cudaquery: %s\n", dlerror());
        return 3;
    }
    int n = 0, v = 0, rc;
    if ((rc = init(0)) != 0 || (rc = count(&n)) != 0 || (rc = version(&v)) != 0) {
        fprintf(stderr, "cudaquery: CUDA error %d\n", rc);
        return 4;
    }
    printf("devices: %d\ncuda: %d\n", n, v);
    /* A device query where the driver has it (the real one; the synthetic one has not). */
    int (*get)(int *, int) = (int (*)(int *, int))dlsym(h, "cuDeviceGet");
    int (*name)(char *, int, int) = (int (*)(char *, int, int))dlsym(h, "cuDeviceGetName");
    int (*attr)(int *, int, int) = (int (*)(int *, int, int))dlsym(h, "cuDeviceGetAttribute");
    int (*mem)(size_t *, int) = (int (*)(size_t *, int))dlsym(h, "cuDeviceTotalMem_v2");
    for (int i = 0; get != NULL && name != NULL && attr != NULL && mem != NULL && i < n; i++) {
        int dev = 0, major = 0, minor = 0;
        char text[256] = {0};
        size_t bytes = 0;
        if (get(&dev, i) != 0 || name(text, (int)sizeof text - 1, dev) != 0)
            continue;
        attr(&major, 75, dev); /* CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR */
        attr(&minor, 76, dev); /* ..._MINOR */
        mem(&bytes, dev);
        printf("device %d: %s, compute capability %d.%d, %zu MiB\n", i, text, major, minor,
               bytes >> 20);
    }
    return 0;
}
"""

_NVMLQUERY_C = r"""
#include <dlfcn.h>
#include <stdio.h>

int main(void)
{
    void *h = dlopen("libnvidia-ml.so.1", RTLD_NOW);
    if (h == NULL) {
        fprintf(stderr, "nvmlquery: %s\n", dlerror());
        return 3;
    }
    int (*init)(void) = (int (*)(void))dlsym(h, "nvmlInit_v2");
    int (*driver)(char *, unsigned int) =
        (int (*)(char *, unsigned int))dlsym(h, "nvmlSystemGetDriverVersion");
    int (*count)(unsigned int *) = (int (*)(unsigned int *))dlsym(h, "nvmlDeviceGetCount_v2");
    int (*shutdown)(void) = (int (*)(void))dlsym(h, "nvmlShutdown");
    if (init == NULL || driver == NULL || count == NULL || shutdown == NULL) {
        fprintf(stderr, "nvmlquery: %s\n", dlerror());
        return 3;
    }
    char version[96];
    unsigned int n = 0;
    int rc;
    if ((rc = init()) != 0 || (rc = driver(version, sizeof version)) != 0 ||
        (rc = count(&n)) != 0) {
        fprintf(stderr, "nvmlquery: NVML error %d\n", rc);
        return 4;
    }
    printf("driver: %s\ndevices: %u\n", version, n);
    shutdown();
    return 0;
}
"""


# --------------------------------------------------------------------------------------------
# ELF: just enough to read what ldconfig reads


ET_DYN = 3
EM_386, EM_X86_64, EM_AARCH64 = 3, 62, 183
#: ldconfig's cache flags by machine: FLAG_ELF_LIBC6 plus the 64-bit ABI flag.
_CACHE_FLAGS = {EM_X86_64: 0x0303, EM_AARCH64: 0x0A03, EM_386: 0x0003}


class ElfInfo(NamedTuple):
    machine: int
    elf_type: int
    soname: Optional[str]
    needed: tuple[str, ...]
    interpreter: Optional[str]


def elf_info(path: Path) -> Optional[ElfInfo]:
    """Machine, type, ``DT_SONAME``, ``DT_NEEDED`` and ``PT_INTERP`` of an ELF file; None for
    anything that is not ELF (or is truncated)."""
    try:
        data = path.read_bytes()
        return _parse_elf(data)
    except (OSError, struct.error, IndexError, ValueError):
        return None


def _parse_elf(data: bytes) -> Optional[ElfInfo]:
    if data[:4] != b"\x7fELF":
        return None
    wide = data[4] == 2
    end = "<" if data[5] == 1 else ">"
    if wide:
        e_type, machine, _v, _entry, phoff, _sh, _fl, _eh, phentsize, phnum = struct.unpack_from(
            end + "HHIQQQIHHH", data, 16
        )
    else:
        e_type, machine, _v, _entry, phoff, _sh, _fl, _eh, phentsize, phnum = struct.unpack_from(
            end + "HHIIIIIHHH", data, 16
        )
    loads: list[tuple[int, int, int]] = []
    dynamic: Optional[tuple[int, int]] = None
    interpreter = None
    for i in range(phnum):
        at = phoff + i * phentsize
        if wide:
            p_type, _f, offset, vaddr, _pa, filesz = struct.unpack_from(end + "IIQQQQ", data, at)
        else:
            p_type, offset, vaddr, _pa, filesz = struct.unpack_from(end + "IIIII", data, at)
        if p_type == 1:  # PT_LOAD
            loads.append((vaddr, offset, filesz))
        elif p_type == 2:  # PT_DYNAMIC
            dynamic = (offset, filesz)
        elif p_type == 3:  # PT_INTERP
            interpreter = data[offset : offset + filesz].split(b"\0")[0].decode()
    soname = None
    needed: list[str] = []
    if dynamic is not None:
        fmt, size = (end + "qQ", 16) if wide else (end + "iI", 8)
        tags: list[tuple[int, int]] = []
        for at in range(dynamic[0], dynamic[0] + dynamic[1], size):
            tag, value = struct.unpack_from(fmt, data, at)
            if tag == 0:
                break
            tags.append((tag, value))
        strtab = next((v for t, v in tags if t == 5), None)
        if strtab is not None:
            base = next(
                (off + strtab - va for va, off, sz in loads if va <= strtab < va + sz), None
            )
            if base is not None:

                def string(offset: int) -> str:
                    stop = data.index(b"\0", base + offset)
                    return data[base + offset : stop].decode()

                for tag, value in tags:
                    if tag == 14:  # DT_SONAME
                        soname = string(value)
                    elif tag == 1:  # DT_NEEDED
                        needed.append(string(value))
    return ElfInfo(machine, e_type, soname, tuple(needed), interpreter)


# --------------------------------------------------------------------------------------------
# /etc/ld.so.cache: ldconfig's scan and glibc's "new" cache format


class CacheEntry(NamedTuple):
    """One ``ld.so.cache`` entry: the name ``dlopen`` looks up, the path, ldconfig's flags."""

    key: str
    value: str
    flags: int = 0x0303


_CACHE_MAGIC = b"glibc-ld.so.cache1.1"
_CACHE_HEADER = struct.Struct("<20sIIB3xI12x")  # magic+version, nlibs, len_strings, flags, ext
_CACHE_ENTRY = struct.Struct("<iIIIQ")  # flags, key, value, osversion, hwcap
_ENDIAN_LITTLE = 2


def _is_digit(c: str) -> bool:
    return "0" <= c <= "9"


def dl_cache_libcmp(a: str, b: str) -> int:
    """glibc's ``_dl_cache_libcmp``: names compare as strings, except that runs of digits compare
    as numbers (``libfoo.so.10`` after ``libfoo.so.9``) and a digit sorts after a non-digit."""
    i = j = 0
    while i < len(a):
        if _is_digit(a[i]):
            if j < len(b) and _is_digit(b[j]):
                si, sj = i, j
                while i < len(a) and _is_digit(a[i]):
                    i += 1
                while j < len(b) and _is_digit(b[j]):
                    j += 1
                va, vb = int(a[si:i]), int(b[sj:j])
                if va != vb:
                    return va - vb
            else:
                return 1
        elif j < len(b) and _is_digit(b[j]):
            return -1
        elif j >= len(b) or a[i] != b[j]:
            return ord(a[i]) - (ord(b[j]) if j < len(b) else 0)
        else:
            i += 1
            j += 1
    return -(ord(b[j]) if j < len(b) else 0)


def _cache_order(x: CacheEntry, y: CacheEntry) -> int:
    """ldconfig's ``compare``: names descending (by libcmp), then higher flags first; equal
    entries keep the order they were added in (the directory order), as ldconfig's insertion
    does, so the first directory wins a lookup."""
    res = dl_cache_libcmp(y.key, x.key)
    if res == 0:
        return (x.flags < y.flags) - (x.flags > y.flags)
    return res


def ld_so_cache_bytes(entries: Iterable[CacheEntry]) -> bytes:
    """A cache in glibc's current format ("glibc-ld.so.cache1.1", little endian, no extension
    section), entries sorted as ldconfig sorts them; string offsets count from the file start.
    A key that ends its path shares the path's bytes, as ldconfig's string table does."""
    ordered = sorted(entries, key=functools.cmp_to_key(_cache_order))
    base = _CACHE_HEADER.size + _CACHE_ENTRY.size * len(ordered)
    strings = bytearray()
    where: dict[str, int] = {}

    def add(text: str) -> int:
        if text not in where:
            where[text] = base + len(strings)
            strings.extend(text.encode() + b"\0")
        return where[text]

    records = []
    for entry in ordered:
        value = add(entry.value)
        if entry.value.endswith("/" + entry.key):
            key = value + len(entry.value.encode()) - len(entry.key.encode())
        else:
            key = add(entry.key)
        records.append(_CACHE_ENTRY.pack(entry.flags, key, value, 0, 0))
    header = _CACHE_HEADER.pack(_CACHE_MAGIC, len(ordered), len(strings), _ENDIAN_LITTLE, 0)
    return header + b"".join(records) + bytes(strings)


def write_ld_so_cache(path: Path, entries: Iterable[CacheEntry]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(ld_so_cache_bytes(entries))


def read_ld_so_cache(path: Path) -> list[CacheEntry]:
    """The entries of a new-format cache, in file order (for tests of the writer and of code
    that reads caches)."""
    data = path.read_bytes()
    magic, nlibs, _len_strings, _flags, _ext = _CACHE_HEADER.unpack_from(data, 0)
    if magic != _CACHE_MAGIC:
        raise ValueError(f"{path}: not a glibc-ld.so.cache1.1 file")

    def string(offset: int) -> str:
        return data[offset : data.index(b"\0", offset)].decode()

    out = []
    for i in range(nlibs):
        flags, key, value, _os, _hwcap = _CACHE_ENTRY.unpack_from(
            data, _CACHE_HEADER.size + i * _CACHE_ENTRY.size
        )
        out.append(CacheEntry(string(key), string(value), flags))
    return out


def _is_dso(name: str) -> bool:
    """glibc's ``_dl_is_dso``: the file names ldconfig looks at."""
    return (
        (name.startswith(("lib", "ld-")) and ".so" in name)
        or name.startswith("ld.so.")
        or name.startswith("ld64.so.")
    )


def scan_ld_dirs(dirs: Sequence[str], root: Optional[Path] = None) -> list[CacheEntry]:
    """What ``ldconfig`` adds to its cache for ``dirs``, in the order it adds them.

    Per directory, following ``search_dir`` in glibc's ``elf/ldconfig.c``: every ``lib*.so*`` /
    ``ld-*.so*`` that is (or links to) an ELF shared object is keyed by its soname, or by its
    own name when it is a symlink named as the soname or as the soname's ``.so`` development
    link (so ``libcuda.so -> libcuda.so.1`` gets an entry of its own, as on real hosts); a file
    beats a link for the same key. The value is ``<dir>/<key>``. ``dirs`` are host-style; with
    ``root`` they are read under it.
    """
    out: list[CacheEntry] = []
    for listed in dirs:
        d = listed.rstrip("/") or "/"
        real = Path(root, d.lstrip("/")) if root is not None else Path(d)
        try:
            names = os.listdir(real)
        except OSError:
            continue
        found: dict[str, tuple[str, bool, int]] = {}  # key -> (file name, is_link, flags)
        for name in names:
            if not _is_dso(name):
                continue
            path = real / name
            is_link = path.is_symlink()
            try:
                if not stat.S_ISREG(path.stat().st_mode):
                    continue
            except OSError:
                continue
            info = elf_info(path)
            if info is None or info.elf_type != ET_DYN:
                continue
            flags = _CACHE_FLAGS.get(info.machine, 0x0003)
            soname = info.soname or name
            if (
                is_link
                and name != soname
                and not (name.endswith(".so") and soname.startswith(name))
            ):
                is_link = False
            key = name if is_link else soname
            old = found.get(key)
            if old is None or (
                (not is_link and old[1])
                or (is_link == old[1] and dl_cache_libcmp(old[0], name) < 0)
            ):
                found[key] = (name, is_link, flags)
        prefix = "" if d == "/" else d
        out += [CacheEntry(k, f"{prefix}/{k}", f) for k, (_n, _l, f) in found.items()]
    return out


def ld_so_conf_dirs(root: Path, conf: str = "/etc/ld.so.conf") -> list[str]:
    """The directories an ``ld.so.conf`` under ``root`` lists (``include`` globs followed),
    then glibc's own (multiarch) directories, as ldconfig appends them."""
    dirs: list[str] = []

    def parse(path: Path) -> None:
        try:
            lines = path.read_text().splitlines()
        except OSError:
            return
        for raw in lines:
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            if line.startswith("include") and line[7:8].isspace():
                for pattern in line[8:].split():
                    for match in sorted(root.glob(pattern.lstrip("/"))):
                        parse(match)
            elif line not in dirs:
                dirs.append(line.rstrip("/") or "/")

    parse(root / conf.lstrip("/"))
    for system in (f"/lib/{_triplet()}", f"/usr/lib/{_triplet()}"):
        if system not in dirs:
            dirs.append(system)
    return dirs


def update_ld_cache(root: Path, dirs: Optional[Sequence[str]] = None) -> list[CacheEntry]:
    """(Re)write ``root/etc/ld.so.cache`` the way ``ldconfig -r root`` would (after a test
    changed the libraries) and return its entries."""
    entries = scan_ld_dirs(dirs if dirs is not None else ld_so_conf_dirs(root), root)
    write_ld_so_cache(root / "etc/ld.so.cache", entries)
    return entries


def _triplet() -> str:
    machine = platform.machine()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine) + "-linux-gnu"


# --------------------------------------------------------------------------------------------
# Building the tree


def _write(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    if path.is_symlink() or path.exists():
        path.unlink()  # it may be read-only (rebuilding a tree, or a test's chmod)
    path.write_bytes(data)
    os.chmod(path, mode)


def _symlink(path: Path, target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.symlink_to(target)


def _install(built: Path, dest: Path, mode: int = 0o755) -> None:
    """A private copy: tests may chmod or truncate what they were given."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(built, dest)
    os.chmod(dest, mode)


def _information(index: int, uuid: str, pci: str, driver: str) -> str:
    """``/proc/driver/nvidia/gpus/<bus>/information`` in nv-procfs.c's format (tabs included)."""
    return (
        f"Model: \t\t {MODEL}\n"
        f"IRQ:   \t\t {24 + index}\n"
        f"GPU UUID: \t {uuid}\n"
        f"Video BIOS: \t 96.00.af.00.{index + 1:02x}\n"
        f"Bus Type: \t PCIe\n"
        f"DMA Size: \t 52 bits\n"
        f"DMA Mask: \t 0xfffffffffffff\n"
        f"Bus Location: \t {pci}\n"
        f"Device Minor: \t {index}\n"
        f"GPU Firmware: \t {driver}\n"
        f"GPU Excluded:\t No\n"
    )


def _caps_file(minor: int, mode: int) -> str:
    """A ``/proc/driver/nvidia/capabilities`` entry: which ``nvidia-cap<minor>`` grants it."""
    return f"DeviceFileMinor: {minor}\nDeviceFileMode: {mode}\nDeviceFileModify: 1\n"


def _gi_minor(gpu: int, gi: int) -> int:
    """nvidia-caps minors: config 1, monitor 2, then per GPU 15 GIs of (1 + 8 CIs) each."""
    return 3 + gpu * 135 + gi * 9


def build_host(
    base: Path,
    *,
    gpus: int = 4,
    driver: str = "550.54.15",
    cuda: int = 12040,
    stale_driver: str = "535.104.05",
    hcas: Sequence[tuple[str, str]] = (("mlx5_0", "0000:3b:00.0"), ("mlx5_1", "0000:3b:00.2")),
    mig: bool = False,
) -> GpuHost:
    """Lay out a synthetic GPU + InfiniBand host under ``base`` (which becomes ``root``; created
    if missing) and describe it. See the module docstring for what the tree holds.

    :param gpus: GPUs (0..64); index == device minor == PCI order.
    :param cuda: what ``cuDriverGetVersion`` reports (``12040`` is CUDA 12.4).
    :param mig: MIG enabled on GPU 0 with one GPU instance (gi 1) holding one compute instance.
    """
    if not 0 <= gpus <= MAX_GPUS:
        raise ValueError(f"gpus must be 0..{MAX_GPUS}")
    root = base
    root.mkdir(parents=True, exist_ok=True)
    uuids = [gpu_uuid(i) for i in range(gpus)]
    pci = [gpu_bus_id(i) for i in range(gpus)]

    # The kernel module's view.
    proc = root / "proc/driver/nvidia"
    _write(proc / "version", _PROC_VERSION.format(driver=driver), 0o444)
    for i, (uuid, bus) in enumerate(zip(uuids, pci)):
        _write(proc / "gpus" / bus / "information", _information(i, uuid, bus, driver), 0o444)
    _write(root / "sys/module/nvidia/version", driver + "\n", 0o444)
    for i, bus in enumerate(pci):
        _pci_device(root, bus, vendor="0x10de", device="0x2335", pci_class="0x030200")
        _write(root / "dev" / f"nvidia{i}", uuids[i] + "\n", 0o666)
    for node in CONTROL_NODES:
        _write(root / node.lstrip("/"), "", 0o666)

    mig_devices: list[MigDevice] = []
    if mig:
        mig_devices = _mig_tree(root, gpus)

    # Driver libraries, the stale driver's leftovers, utilities and ICD files.
    libs = _driver_libraries(root, driver, cuda)
    stale = _stale_libraries(root, stale_driver)
    _write(root / "usr/bin/nvidia-smi", _nvidia_smi(driver, cuda, uuids, pci, mig_devices), 0o755)
    _write(root / "usr/bin/nvidia-debugdump", _NVIDIA_DEBUGDUMP, 0o755)
    _write(root / "etc/OpenCL/vendors/nvidia.icd", "libnvidia-opencl.so.1\n")
    _write(root / "usr/share/vulkan/icd.d/nvidia_icd.json", _VULKAN_ICD)
    _write(root / "usr/share/glvnd/egl_vendor.d/10_nvidia.json", _EGL_VENDOR)

    ib_nodes = _infiniband(root, hcas)

    _write(root / "etc/ld.so.conf", f"# synthetic GPU host\n{LIBDIR}\n{STALE_LIBDIR}\n")
    update_ld_cache(root, [LIBDIR, STALE_LIBDIR])

    return GpuHost(
        root=root,
        driver=driver,
        cuda=cuda,
        uuids=uuids,
        pci=pci,
        hcas=[(name, addr) for name, addr in hcas],
        stale_driver=stale_driver,
        mig=mig,
        mig_devices=mig_devices,
        libraries=libs,
        stale_libraries=stale,
        binaries=list(BINARIES),
        control_nodes=list(CONTROL_NODES),
        ib_nodes=ib_nodes,
    )


def _pci_device(root: Path, bus: str, *, vendor: str, device: str, pci_class: str) -> Path:
    """``/sys/devices/pciDDDD:BB/<bus>`` with ids, and the ``/sys/bus/pci/devices`` link."""
    port = _root_port(bus)
    d = root / "sys/devices" / port / bus
    for name, value in (("vendor", vendor), ("device", device), ("class", pci_class)):
        _write(d / name, value + "\n", 0o444)
    _write(d / "numa_node", "0\n", 0o444)
    _symlink(root / "sys/bus/pci/devices" / bus, f"../../../devices/{port}/{bus}")
    return d


def _mig_tree(root: Path, gpus: int) -> list[MigDevice]:
    """MIG's capability files as the driver lays them out: global ``config`` (nvidia-cap1, root
    only) and ``monitor`` (nvidia-cap2), the ``mig-minors`` table, and GPU 0's gi1/ci0."""
    caps = root / "proc/driver/nvidia/capabilities"
    _write(caps / "mig/config", _caps_file(1, 0o400), 0o444)
    _write(caps / "mig/monitor", _caps_file(2, 0o444), 0o444)
    _write(root / "dev/nvidia-caps/nvidia-cap1", "", 0o400)
    _write(root / "dev/nvidia-caps/nvidia-cap2", "", 0o444)
    lines = ["config 1", "monitor 2"]
    for g in range(gpus):
        for gi in range(15):
            lines.append(f"gpu{g}/gi{gi}/access {_gi_minor(g, gi)}")
            lines += [f"gpu{g}/gi{gi}/ci{ci}/access {_gi_minor(g, gi) + 1 + ci}" for ci in range(8)]
    _write(root / "proc/driver/nvidia-caps/mig-minors", "\n".join(lines) + "\n", 0o444)
    if gpus == 0:
        return []
    gi, ci = 1, 0
    gi_minor = _gi_minor(0, gi)
    ci_minor = gi_minor + 1 + ci
    gi_access = f"/proc/driver/nvidia/capabilities/gpu0/mig/gi{gi}/access"
    ci_access = f"/proc/driver/nvidia/capabilities/gpu0/mig/gi{gi}/ci{ci}/access"
    _write(root / gi_access.lstrip("/"), _caps_file(gi_minor, 0o444), 0o444)
    _write(root / ci_access.lstrip("/"), _caps_file(ci_minor, 0o444), 0o444)
    gi_node = f"/dev/nvidia-caps/nvidia-cap{gi_minor}"
    ci_node = f"/dev/nvidia-caps/nvidia-cap{ci_minor}"
    _write(root / gi_node.lstrip("/"), "", 0o444)
    _write(root / ci_node.lstrip("/"), "", 0o444)
    return [MigDevice(0, gi, ci, mig_uuid(0, gi, ci), gi_access, ci_access, gi_node, ci_node)]


def _driver_libraries(root: Path, driver: str, cuda: int) -> list[str]:
    libdir = root / LIBDIR.lstrip("/")
    out = []
    for stem, soname in DRIVER_LIBS:
        name = f"{stem}.{driver}"
        if stem == "libcuda.so":
            built = shared_object(_LIBCUDA_C, soname, [f"-DUC_CUDA_VERSION={cuda}"])
        elif stem == "libnvidia-ml.so":
            defines = [f'-DUC_DRIVER_VERSION="{driver}"', f"-DUC_CUDA_VERSION={cuda}"]
            built = shared_object(_LIBNVML_C, soname, defines)
        else:
            built = shared_object(_STUB_C, soname or name)
        _install(built, libdir / name)
        if soname:
            _symlink(libdir / soname, name)
        out.append(f"{LIBDIR}/{name}")
    _symlink(libdir / "libcuda.so", "libcuda.so.1")
    return out


def _stale_libraries(root: Path, stale_driver: str) -> list[str]:
    """An older driver's libcuda/libnvidia-ml left in ``/usr/lib64`` (a classic cause of
    "CUDA driver version is insufficient"): they report 99 devices, so a test sees the mix-up."""
    libdir = root / STALE_LIBDIR.lstrip("/")
    fixed = [f"-DUC_FIXED_COUNT={STALE_COUNT}", f"-DUC_CUDA_VERSION={STALE_CUDA}"]
    cuda = shared_object(_LIBCUDA_C, "libcuda.so.1", fixed)
    nvml = shared_object(
        _LIBNVML_C, "libnvidia-ml.so.1", [*fixed, f'-DUC_DRIVER_VERSION="{stale_driver}"']
    )
    out = []
    for built, stem, soname in (
        (cuda, "libcuda.so", "libcuda.so.1"),
        (nvml, "libnvidia-ml.so", "libnvidia-ml.so.1"),
    ):
        name = f"{stem}.{stale_driver}"
        _install(built, libdir / name)
        _symlink(libdir / soname, name)
        out.append(f"{STALE_LIBDIR}/{name}")
    return out


def _node_guid(index: int) -> str:
    raw = hashlib.sha256(f"ucore synthetic hca {index}".encode()).hexdigest()[:12]
    return f"b8ce:f603:00{raw[:2]}:{raw[2:6]}"


def _infiniband(root: Path, hcas: Sequence[tuple[str, str]]) -> list[str]:
    """HCAs as the kernel and rdma-core show them: ``/dev/infiniband`` files (holding the HCA's
    name, so a container can tell which it got), the ``infiniband``, ``infiniband_verbs`` and
    ``infiniband_mad`` sysfs classes linking into the PCI device, and the verbs libraries."""
    nodes = []
    classes = root / "sys/class"
    for i, (name, bus) in enumerate(hcas):
        dev = _pci_device(root, bus, vendor="0x15b3", device="0x101b", pci_class="0x020700")
        port = _root_port(bus)
        ib = dev / "infiniband" / name
        _write(ib / "node_type", "1: CA\n", 0o444)
        _write(ib / "node_guid", _node_guid(i) + "\n", 0o444)
        _write(ib / "sys_image_guid", _node_guid(i) + "\n", 0o444)
        _write(ib / "fw_ver", "20.39.1002\n", 0o444)
        _write(ib / "hca_type", "MT4123\n", 0o444)
        _write(ib / "ports/1/state", "4: ACTIVE\n", 0o444)
        _write(ib / "ports/1/phys_state", "5: LinkUp\n", 0o444)
        _write(ib / "ports/1/link_layer", "InfiniBand\n", 0o444)
        _write(ib / "ports/1/rate", "200 Gb/sec (4X HDR)\n", 0o444)
        _write(ib / "ports/1/lid", f"0x{i + 1:x}\n", 0o444)
        _symlink(ib / "device", f"../../../{bus}")
        _symlink(classes / "infiniband" / name, f"../../devices/{port}/{bus}/infiniband/{name}")
        for cls, entry, dev_no, extra in (
            ("infiniband_verbs", f"uverbs{i}", f"231:{192 + i}", {"abi_version": "1\n"}),
            ("infiniband_mad", f"umad{i}", f"231:{i}", {"port": "1\n"}),
            ("infiniband_mad", f"issm{i}", f"231:{64 + i}", {"port": "1\n"}),
        ):
            d = dev / cls / entry
            _write(d / "ibdev", name + "\n", 0o444)
            _write(d / "dev", dev_no + "\n", 0o444)
            for fname, content in extra.items():
                _write(d / fname, content, 0o444)
            _symlink(d / "device", f"../../../{bus}")
            _symlink(classes / cls / entry, f"../../devices/{port}/{bus}/{cls}/{entry}")
        for kind in ("uverbs", "umad", "issm"):
            _write(root / f"dev/infiniband/{kind}{i}", name + "\n", 0o666)
            nodes.append(f"/dev/infiniband/{kind}{i}")
    if hcas:
        _write(classes / "infiniband_verbs/abi_version", "6\n", 0o444)
        _write(classes / "infiniband_mad/abi_version", "5\n", 0o444)
        _write(root / "dev/infiniband/rdma_cm", "", 0o666)
        nodes.append("/dev/infiniband/rdma_cm")
        libdir = root / LIBDIR.lstrip("/")
        _install(shared_object(_STUB_C, "libibverbs.so.1"), libdir / "libibverbs.so.1.14.44.0")
        _symlink(libdir / "libibverbs.so.1", "libibverbs.so.1.14.44.0")
        provider = shared_object(_STUB_C, None, ["-DUCORE_PROVIDER=mlx5"])
        _install(provider, libdir / "libibverbs/libmlx5-rdmav34.so")
        _write(root / "etc/libibverbs.d/mlx5.driver", "driver mlx5\n")
    return nodes


_VULKAN_ICD = """{
    "file_format_version" : "1.0.1",
    "ICD": {
        "library_path": "libGLX_nvidia.so.0",
        "api_version" : "1.3.277"
    }
}
"""

_EGL_VENDOR = """{
    "file_format_version" : "1.0.0",
    "ICD" : {
        "library_path" : "libEGL_nvidia.so.0"
    }
}
"""

_NVIDIA_DEBUGDUMP = """#!/bin/sh
# nvidia-debugdump of a synthetic GPU host (ucore tests): there is no GPU to dump.
echo "nvidia-debugdump: synthetic host, nothing to dump"
exit 0
"""


def _nvidia_smi(
    driver: str, cuda: int, uuids: list[str], pci: list[str], migs: list[MigDevice]
) -> str:
    """A ``/bin/sh`` nvidia-smi (busybox-compatible): ``-L`` lists the readable
    ``/dev/nvidia<N>`` files by the UUIDs they hold, as the real tool lists what a container
    was given; anything else prints a short table with the driver version."""
    cuda_text = f"{cuda // 1000}.{cuda % 1000 // 10}"
    bus_cases = "".join(f"        {u}) echo 0000{b.upper()} ;;\n" for u, b in zip(uuids, pci))
    mig_cases = "".join(
        f"        {uuids[m.gpu]}) echo '  MIG 1g.18gb     Device  {m.ci}: (UUID: {m.uuid})' ;;\n"
        for m in migs
    )
    return f"""#!/bin/sh
# nvidia-smi of a synthetic GPU host (ucore tests): the GPUs are /dev/nvidiaN files that hold
# their UUIDs; the ones this process can read are the ones it was given.
dev=${{{DEV_DIR_ENV}:-/dev}}

visible() {{
    n=0
    while [ "$n" -lt {MAX_GPUS} ]; do
        if [ -r "$dev/nvidia$n" ]; then
            uuid=
            read -r uuid < "$dev/nvidia$n"
            echo "$n $uuid"
        fi
        n=$((n + 1))
    done
}}

bus_of() {{
    case "$1" in
{bus_cases}        *) echo 00000000:00:00.0 ;;
    esac
}}

mig_of() {{
    case "$1" in
{mig_cases}        *) ;;
    esac
}}

found=$(visible)
case "$1" in
-L|--list-gpus)
    if [ -z "$found" ]; then
        echo "No devices were found"
        exit 6
    fi
    i=0
    echo "$found" | while read -r minor uuid; do
        echo "GPU $i: {MODEL} (UUID: $uuid)"
        mig_of "$uuid"
        i=$((i + 1))
    done
    ;;
--version)
    echo "NVIDIA-SMI version  : {driver}"
    echo "NVML version        : {driver.rsplit(".", 1)[0]}"
    echo "DRIVER version      : {driver}"
    echo "CUDA Version        : {cuda_text}"
    ;;
*)
    echo "+-----------------------------------------------------------------------------+"
    echo "| NVIDIA-SMI {driver:<12} Driver Version: {driver:<12} CUDA Version: {cuda_text:<9}|"
    echo "|-------------------------------+----------------------+----------------------+"
    i=0
    echo "$found" | while read -r minor uuid; do
        [ -n "$uuid" ] || continue
        bus=$(bus_of "$uuid")
        printf '| %3d  %-25s| %s Off |                    0 |\\n' "$i" "{MODEL}" "$bus"
        i=$((i + 1))
    done
    echo "+-------------------------------+----------------------+----------------------+"
    ;;
esac
"""


# --------------------------------------------------------------------------------------------
# CDI spec and nvidia-container-cli


def _hook(*args: str) -> dict[str, Any]:
    return {
        "hookName": "createContainer",
        "path": "/usr/bin/nvidia-ctk",
        "args": ["nvidia-ctk", "hook", *args],
    }


def _mount(host_path: str, container_path: Optional[str] = None) -> dict[str, Any]:
    return {
        "hostPath": host_path,
        "containerPath": container_path or host_path,
        "options": ["ro", "nosuid", "nodev", "bind"],
    }


def cdi_spec(host: GpuHost) -> dict[str, Any]:
    """The ``nvidia.com/gpu`` spec ``nvidia-ctk cdi generate`` (1.14-style hooks, index and UUID
    names) writes for this host; paths are host-style.

    Devices come per GPU as ``"<index>"`` then ``"GPU-…"``, then MIG devices (``"0:0"``,
    ``"MIG-…"``), then ``"all"``. Shared edits: ``NVIDIA_VISIBLE_DEVICES=void``, the control
    nodes, the utilities, the Vulkan ICD (mounted at ``/etc/vulkan/icd.d``, the one mount whose
    container path differs), the driver libraries (sorted), the glvnd EGL vendor file, and the
    ``create-symlinks``/``update-ldcache`` hooks.
    """
    devices: list[dict[str, Any]] = []
    for i, uuid in enumerate(host.uuids):
        edits = {"deviceNodes": [{"path": f"/dev/nvidia{i}"}]}
        devices.append({"name": str(i), "containerEdits": edits})
        devices.append({"name": uuid, "containerEdits": edits})
    all_nodes = [{"path": node} for node in host.gpu_nodes]
    for m in host.mig_devices:
        nodes = [{"path": f"/dev/nvidia{m.gpu}"}, {"path": m.gi_node}, {"path": m.ci_node}]
        devices.append({"name": f"{m.gpu}:{m.ci}", "containerEdits": {"deviceNodes": nodes}})
        devices.append({"name": m.uuid, "containerEdits": {"deviceNodes": nodes}})
        all_nodes += nodes[1:]
    devices.append({"name": "all", "containerEdits": {"deviceNodes": all_nodes}})

    glx = next(p for p in host.libraries if "libGLX_nvidia" in p).rsplit("/", 1)[1]
    mounts = [_mount(b) for b in sorted(host.binaries)]
    mounts.append(
        _mount("/usr/share/vulkan/icd.d/nvidia_icd.json", "/etc/vulkan/icd.d/nvidia_icd.json")
    )
    mounts += [_mount(lib) for lib in sorted(host.libraries)]
    mounts.append(_mount("/usr/share/glvnd/egl_vendor.d/10_nvidia.json"))
    return {
        "cdiVersion": "0.5.0",
        "kind": "nvidia.com/gpu",
        "devices": devices,
        "containerEdits": {
            "env": ["NVIDIA_VISIBLE_DEVICES=void"],
            "deviceNodes": [{"path": node} for node in sorted(host.control_nodes)],
            "hooks": [
                _hook(
                    "create-symlinks",
                    "--link",
                    f"{glx}::{LIBDIR}/libGLX_indirect.so.0",
                    "--link",
                    f"libcuda.so.1::{LIBDIR}/libcuda.so",
                ),
                _hook("update-ldcache", "--folder", LIBDIR),
            ],
            "mounts": mounts,
        },
    }


_PLAIN = re.compile(r"^(?:[A-Za-z/_]|--?[A-Za-z])[A-Za-z0-9_./=+:@-]*$")
_YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, bool) or value is None or isinstance(value, (int, float)):
        return json.dumps(value)
    text = str(value)
    if _PLAIN.match(text) and not text.endswith(":") and text.lower() not in _YAML_WORDS:
        return text
    return json.dumps(text)  # a double-quoted YAML scalar (ASCII JSON strings are valid YAML)


def _yaml_block(value: Any, indent: int) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key in sorted(value):
            item = value[key]
            if isinstance(item, (dict, list)) and item:
                lines.append(f"{pad}{_yaml_scalar(key)}:")
                lines += _yaml_block(item, indent if isinstance(item, list) else indent + 2)
            else:
                lines.append(f"{pad}{_yaml_scalar(key)}: {_yaml_inline(item)}")
    else:
        for item in value:
            if isinstance(item, (dict, list)) and item:
                sub = _yaml_block(item, indent + 2)
                lines.append(f"{pad}- {sub[0].lstrip()}")
                lines += sub[1:]
            else:
                lines.append(f"{pad}- {_yaml_inline(item)}")
    return lines


def _yaml_inline(value: Any) -> str:
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return _yaml_scalar(value)


def to_yaml(data: Any) -> str:
    """Block YAML as ``nvidia-ctk`` writes it (``---``, keys sorted, sequences not indented
    under their key), from JSON-like data; strings that could read as anything else are
    double-quoted."""
    return "---\n" + "\n".join(_yaml_block(data, 0)) + "\n"


def write_cdi_spec(
    host: GpuHost,
    name: str = "nvidia.yaml",
    data: Optional[dict[str, Any]] = None,
    directory: str = "etc/cdi",
    *,
    style: str = "block",
) -> Path:
    """Write ``data`` (default: :func:`cdi_spec`) to ``root/directory/name``: JSON for a
    ``.json`` name, else YAML: ``style="block"`` as nvidia-ctk writes it, or ``"flow"`` (the
    JSON text, which YAML 1.2 parsers read as well) for readers without a YAML library."""
    spec = cdi_spec(host) if data is None else data
    path = host.root / directory.strip("/") / name
    if name.endswith(".json") or style == "flow":
        text = json.dumps(spec, indent=2) + "\n"
    elif style == "block":
        text = to_yaml(spec)
    else:
        raise ValueError(f"style must be 'block' or 'flow', not {style!r}")
    _write(path, text)
    return path


def container_cli_list(host: GpuHost) -> list[str]:
    """What ``nvidia-container-cli list`` prints for this host: control nodes, GPU nodes (and
    MIG capability files), utilities, then the driver's libraries in libnvidia-container's table
    order (the stale driver's are skipped: their version is not the kernel module's)."""
    out = list(host.control_nodes) + host.gpu_nodes
    if host.mig_devices:
        caps = "/proc/driver/nvidia/capabilities"
        gpus = sorted({m.gpu for m in host.mig_devices})
        out.append(f"{caps}/mig/config")
        out += [f"{caps}/gpu{g}/mig" for g in gpus]
        out.append(f"{caps}/mig/monitor")
        out += [f"{caps}/gpu{g}/mig" for g in gpus]
    return out + list(host.binaries) + list(host.libraries)


def fake_container_cli(host: GpuHost) -> Path:
    """Write ``root/usr/bin/nvidia-container-cli``: a ``/bin/sh`` stand-in that answers
    ``--version``, ``info`` and ``list`` (``-l``/``-b``/``-i``/``-d ID`` as the real one; with
    no option, everything). Global options before the command (``-k``, ``--root=…``,
    ``--ldcache=…``, ``--user``, ``--debug=…``) are accepted and ignored. Control nodes,
    utilities and libraries are printed only while their files exist in the tree (the real tool
    stats them), GPU nodes always (it asks the driver)."""
    root = str(host.root)
    entries = container_cli_list(host)
    gpu_nodes = set(host.gpu_nodes)
    mig_files = {e for e in entries if e.startswith("/proc/")}
    devs = [e for e in entries if e.startswith("/dev/") or e in mig_files]
    bins = [e for e in entries if e in host.binaries]
    libs = [e for e in entries if e in host.libraries]

    def lines(paths: list[str], *, always: Iterable[str] = ()) -> str:
        keep = set(always)
        return "    :\n" + "".join(
            f"    echo '{p}'\n" if p in keep else f"    [ -e \"$root{p}\" ] && echo '{p}'\n"
            for p in paths
        )

    ctl = [d for d in devs if d not in gpu_nodes and d not in mig_files]
    gpu_select = "".join(
        f"            {i}|{uuid}|{pci}) echo /dev/nvidia{i} ;;\n"
        for i, (uuid, pci) in enumerate(zip(host.uuids, host.pci))
    )
    info = "".join(
        f'    printf "\\nDevice Index:   {i}\\nDevice Minor:   {i}\\nModel:          {MODEL}\\n'
        f"Brand:          Nvidia\\nGPU UUID:       {uuid}\\nBus Location:   0000{pci}\\n"
        f'Architecture:   9.0\\n"\n'
        for i, (uuid, pci) in enumerate(zip(host.uuids, host.pci))
    )
    script = f"""#!/bin/sh
# nvidia-container-cli of a synthetic GPU host (ucore tests); prints host-style paths.
root='{root}'

version() {{
    echo "cli-version: {CONTAINER_CLI_VERSION}"
    echo "lib-version: {CONTAINER_CLI_VERSION}"
    echo "build date: 2024-02-29T15:20+00:00"
    echo "build revision: synthetic"
    echo "build compiler: x86_64-linux-gnu-gcc-7 7.5.0"
    echo "build platform: x86_64"
    echo "build flags: -D_GNU_SOURCE -D_FORTIFY_SOURCE=2 -DNDEBUG -std=gnu11 -O2 -g"
}}

while [ $# -gt 0 ]; do
    case "$1" in
    -V|--version) version; exit 0 ;;
    -k|--load-kmods|-u|--user|--no-pivot|--no-cgroups|--debug=*|--root=*|--ldcache=*|--user=*)
        shift ;;
    -d|--debug|-r|--root|-l|--ldcache) shift 2 ;;
    list|info|configure) break ;;
    *) echo "nvidia-container-cli: unrecognized option '$1'" >&2; exit 64 ;;
    esac
done
cmd=$1
[ $# -gt 0 ] && shift

case "$cmd" in
info)
    printf "NVRM version:   {host.driver}\\nCUDA version:   {host.cuda_version}\\n"
{info}    exit 0 ;;
list) ;;
*) echo "Usage: nvidia-container-cli [OPTION...] COMMAND [ARG...]" >&2; exit 64 ;;
esac

devices= libs= bins= ipcs= everything=
[ $# -eq 0 ] && devices=all libs=1 bins=1 ipcs=1 everything=1
while [ $# -gt 0 ]; do
    case "$1" in
    -l|--libraries) libs=1 ;;
    -b|--binaries) bins=1 ;;
    -i|--ipcs) ipcs=1 ;;
    --compat32) ;;
    -d|--device) shift; devices="$devices${{devices:+,}}$1" ;;
    --device=*) devices="$devices${{devices:+,}}${{1#--device=}}" ;;
    --mig-config=*|--mig-monitor=*) ;;
    --mig-config|--mig-monitor) shift ;;
    *) echo "nvidia-container-cli: unrecognized option '$1'" >&2; exit 64 ;;
    esac
    shift
done

if [ -n "$devices" ]; then
    echo '/dev/nvidiactl'
{lines([d for d in ctl if d != "/dev/nvidiactl"])}    if [ "$devices" = all ]; then
{lines(sorted(gpu_nodes, key=devs.index), always=gpu_nodes)}    else
        saved_ifs=$IFS
        IFS=,
        for id in $devices; do
            case "$id" in
{gpu_select}            *) echo "nvidia-container-cli: device error: $id" >&2; exit 1 ;;
            esac
        done
        IFS=$saved_ifs
    fi
fi
if [ -n "$everything" ]; then
{lines([d for d in devs if d in mig_files], always=mig_files)}fi
if [ -n "$bins" ]; then
{lines(bins)}fi
if [ -n "$libs" ]; then
{lines(libs)}fi
exit 0
"""
    path = host.path("/usr/bin/nvidia-container-cli")
    _write(path, script, 0o755)
    return path


# --------------------------------------------------------------------------------------------
# The glibc test image


NEEDS_CUDA_12_2 = "cuda>=12.2 brand=tesla,driver>=470,driver<471"
NEEDS_CUDA_13_1 = "cuda>=13.1"


def _host_lib(name: str) -> str:
    """Where the host keeps a system library (Debian multiarch first)."""
    t = _triplet()
    for d in (f"/lib/{t}", f"/usr/lib/{t}", "/lib64", "/usr/lib64", "/lib", "/usr/lib"):
        if os.path.exists(f"{d}/{name}"):
            return f"{d}/{name}"
    raise RuntimeError(f"host library {name} not found")


def _add_host_file(layer: LayerBuilder, path: str, seen: set[str]) -> None:
    """``path`` as the host has it: each symlink on the way re-created with its target (the
    interpreter's ``/lib64/ld-linux-x86-64.so.2 -> /lib/x86_64-linux-gnu/…``), then the file
    itself, placed where the last link names it (so the image keeps Debian's layout even when
    the host's ``/lib`` is a link to ``usr/lib``)."""
    current = path
    for _ in range(16):
        if current in seen:
            return
        seen.add(current)
        if not os.path.islink(current):
            break
        target = os.readlink(current)
        layer.symlink(current, target)
        current = str(
            PurePosixPath(os.path.normpath(os.path.join(os.path.dirname(current), target)))
        )
    layer.file(current, Path(current).read_bytes(), 0o755)


def _glibc_layer_tar() -> bytes:
    layer = LayerBuilder()
    t = _triplet()
    seen: set[str] = set()
    programs = {name: program(name) for name in ("cudaquery", "nvmlquery")}
    info = elf_info(programs["cudaquery"])
    if info is None or info.interpreter is None:
        raise RuntimeError("cudaquery: no ELF interpreter")
    _add_host_file(layer, info.interpreter, seen)
    needed = {"libc.so.6"}
    for built in programs.values():
        found = elf_info(built)
        needed.update(found.needed if found else ())
    for lib in sorted(needed):
        host_path = _host_lib(lib)
        if host_path != f"/lib/{t}/{lib}":
            layer.file(f"lib/{t}/{lib}", Path(host_path).read_bytes(), 0o755)
        else:
            _add_host_file(layer, host_path, seen)
    for d in ("usr/local/bin", "usr/local/lib", "usr/local/sbin", "usr/local/share"):
        layer.dir(d)
    layer.dir(f"usr/lib/{t}")
    layer.file("etc/ld.so.conf", "include /etc/ld.so.conf.d/*.conf\n\n")
    layer.file("etc/ld.so.conf.d/libc.conf", "/usr/local/lib\n")
    layer.file(
        f"etc/ld.so.conf.d/{t}.conf",
        f"# Multiarch support\n/usr/local/lib/{t}\n/lib/{t}\n/usr/lib/{t}\n",
    )
    for name, built in programs.items():
        layer.file(f"usr/bin/{name}", built.read_bytes(), 0o755)
    return layer.tar()


def build_gpu_images() -> dict[str, Image]:
    """The glibc GPU test images, built now (see :func:`gpu_image_tags` for the cached ones)."""
    layers = [make_layer(busybox_layer_tar()), make_layer(_glibc_layer_tar())]
    history = ["ADD busybox /", "ADD glibc, cudaquery, nvmlquery /"]

    def image(*extra_env: str) -> Image:
        config = {
            "Env": [f"PATH={DEFAULT_PATH}", *extra_env],
            "Cmd": ["sh"],
            "WorkingDir": "/",
            "Labels": {"org.opencontainers.image.title": "ucore test gpu-glibc"},
        }
        return build_image(layers, config=config, history=history)

    return {
        "gpu-glibc:latest": image(),
        "gpu-glibc:needs-cuda-12.2": image(f"NVIDIA_REQUIRE_CUDA={NEEDS_CUDA_12_2}"),
        "gpu-glibc:needs-cuda-13.1": image(f"NVIDIA_REQUIRE_CUDA={NEEDS_CUDA_13_1}"),
    }


@functools.lru_cache(maxsize=1)
def _cached_images() -> tuple[tuple[str, Image], ...]:
    return tuple(build_gpu_images().items())


def gpu_image_tags() -> dict[str, Image]:
    """``repository:tag -> Image`` for the glibc GPU images, built once per process: busybox
    (``/bin/sh``) plus the host's dynamic loader and libc in Debian's places, and
    ``/usr/bin/cudaquery`` / ``/usr/bin/nvmlquery``, which ``dlopen`` ``libcuda.so.1`` /
    ``libnvidia-ml.so.1`` by the normal search path and print ``devices: N`` and ``cuda: V`` /
    ``driver: V`` and ``devices: N`` (exit 3 with ``<prog>: <dlerror>`` when the library is
    missing). The ``needs-cuda-*`` tags add ``NVIDIA_REQUIRE_CUDA`` to the environment."""
    return dict(_cached_images())


def gpu_image() -> Image:
    """``gpu-glibc:latest``."""
    return gpu_image_tags()["gpu-glibc:latest"]
