"""The first source: Container Device Interface specs (``/etc/cdi``, ``/var/run/cdi``).

NVIDIA's ``nvidia-ctk cdi generate`` writes one for the ``nvidia.com/gpu`` kind: device nodes
per GPU (named by index, UUID, ``GPU:MIG`` index and MIG UUID), and shared edits: control
nodes, the driver's libraries and utilities as mounts, environment, and ``createContainer``
hooks. Rootless engines cannot run those hooks; what they do is reproduced instead: the
symlinks (``create-symlinks``) by binding each library under its soname and development name,
the linker cache update (``update-ldcache``) by the library path. Others are reported.

A spec is untrusted input: one writable by anyone but root and the invoking user is refused
(whoever can edit it chooses what the container loads), its size and its lists are bounded,
device nodes must lie under ``/dev``, files must lie where drivers install them, and no path
may hold ``..``. Container paths go through the core's placement, which resolves them inside
the root.
"""

from __future__ import annotations

import os
import posixpath
import re
import reprlib
import stat
from typing import Any, Optional

from ucore.values.errors import DeviceError
from ucore_gpu import catalog
from ucore_gpu.inventory import Extra, Gpu, Inventory, number
from ucore_gpu.settings import Settings

KIND = "nvidia.com/gpu"
MAX_SPEC = 4 << 20
#: Entries of any one list, and in all, that a spec may hold.
MAX_ITEMS = 4096
#: Where a spec's files may come from (device nodes: ``/dev`` only).
FILE_PLACES = (
    "/usr/",
    "/lib/",
    "/lib32/",
    "/lib64/",
    "/opt/",
    "/etc/vulkan/",
    "/etc/OpenCL/",
    "/etc/glvnd/",
    "/etc/egl/",
    "/etc/nvidia/",
    "/run/nvidia",
    "/var/run/nvidia",
)
#: Container paths a spec's mount may not cover (the engines' own mounts, or the root).
_PSEUDO = ("/", "/proc", "/sys", "/dev")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SHOWN = reprlib.Repr()
_SHOWN.maxstring = _SHOWN.maxother = 100
_SHOWN.maxlevel = 2


def _show(value: Any) -> str:
    """A spec's value in a message, bounded: YAML aliases can make a few hundred bytes a
    structure whose full ``repr`` has billions of entries (the "billion laughs")."""
    return _SHOWN.repr(value)


def spec_files(settings: Settings) -> list[str]:
    """The spec files, in CDI's order (later directories override earlier ones: we keep the
    order and let the first spec of our kind win, as one spec per kind is the norm)."""
    out = []
    for d in reversed(settings.cdi_dirs):
        try:
            names = sorted(os.listdir(settings.host(d)))
        except OSError:
            continue
        out += [f"{d}/{n}" for n in names if n.endswith((".yaml", ".yml", ".json"))]
    return out


def discover(settings: Settings, driver: Optional[str]) -> Optional[Inventory]:
    """The inventory from the first spec of kind ``nvidia.com/gpu``; None when there is none.
    A damaged spec is a :class:`DeviceError`: a site that installed one means it to be used."""
    for path in spec_files(settings):
        data = _load(settings, path)
        if data.get("kind") != KIND:
            continue
        return _inventory(settings, path, data, driver)
    return None


def _load(settings: Settings, path: str) -> dict[str, Any]:
    real = settings.host(path)
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise DeviceError(f"CDI spec {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise DeviceError(f"CDI spec {path}: not a regular file")
        if st.st_uid not in (0, os.getuid()) or st.st_mode & 0o022:
            raise DeviceError(
                f"CDI spec {path}: writable by others than root and you, so not trusted"
            )
        raw = f.read(MAX_SPEC + 1)
    if len(raw) > MAX_SPEC:
        raise DeviceError(f"CDI spec {path}: larger than {MAX_SPEC >> 20} MiB")
    try:
        text = raw.decode("utf-8")
        if path.endswith(".json"):
            import json

            data = json.loads(text)
        else:
            import yaml

            loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
            data = yaml.load(text, Loader=loader)
    except RecursionError:
        raise DeviceError(f"CDI spec {path}: nested too deeply") from None
    except Exception as exc:  # noqa: BLE001 - every parser failure is the spec's fault
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DeviceError(f"CDI spec {path}: not valid YAML or JSON: {first}") from None
    if not isinstance(data, dict):
        raise DeviceError(f"CDI spec {path}: not a mapping")
    return data


class _Reader:
    """Typed access to a spec's parts, every failure naming the spec and the part."""

    def __init__(self, settings: Settings, path: str) -> None:
        self.settings = settings
        self.path = path
        self.items = 0

    def fail(self, what: str) -> DeviceError:
        return DeviceError(f"CDI spec {self.path}: {what}")

    def list(self, node: Any, where: str) -> list[Any]:
        if node is None:
            return []
        if not isinstance(node, list):
            raise self.fail(f"{where} is not a list")
        self.items += len(node)
        if len(node) > MAX_ITEMS or self.items > 8 * MAX_ITEMS:
            raise self.fail(f"{where} has too many entries")
        return node

    def map(self, node: Any, where: str) -> dict[str, Any]:
        if node is None:
            return {}
        if not isinstance(node, dict):
            raise self.fail(f"{where} is not a mapping")
        return node

    def path_of(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
            raise self.fail(f"{where} {_show(value)} is not an absolute path")
        if ".." in value.split("/") or posixpath.normpath(value) != value:
            raise self.fail(f"{where} {_show(value)} is not a plain path")
        return value

    def node(self, entry: Any, where: str) -> str:
        entry = self.map(entry, where)
        path = self.path_of(entry.get("path"), f"{where} path")
        host = self.path_of(entry.get("hostPath") or path, f"{where} hostPath")
        for p in (path, host):
            if not p.startswith("/dev/"):
                raise self.fail(f"{where} {p} is not under /dev")
        if host != path:
            raise self.fail(f"{where}: a node renamed in the container ({host} as {path})")
        real = self.settings.host(host)
        try:
            mode = os.stat(real).st_mode
        except OSError:
            raise self.fail(f"{where} {host} does not exist on this host") from None
        if not (stat.S_ISCHR(mode) or (self.settings.synthetic and stat.S_ISREG(mode))):
            raise self.fail(f"{where} {host} is not a character device")
        return host


def _inventory(
    settings: Settings, path: str, data: dict[str, Any], driver: Optional[str]
) -> Inventory:
    r = _Reader(settings, path)
    version = data.get("cdiVersion")
    if not isinstance(version, str) or not re.match(r"^0\.\d+\.\d+$", version):
        raise r.fail(f"cdiVersion {_show(version)} is not one this reader knows (0.x.y)")
    edits = r.map(data.get("containerEdits"), "containerEdits")
    control = tuple(
        r.node(n, "containerEdits.deviceNodes")
        for n in r.list(edits.get("deviceNodes"), "containerEdits.deviceNodes")
    )
    groups: dict[tuple[str, ...], list[str]] = {}
    for i, item in enumerate(r.list(data.get("devices"), "devices")):
        dev = r.map(item, f"devices[{i}]")
        name = dev.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise r.fail(f"devices[{i}] has no valid name")
        dev_edits = r.map(dev.get("containerEdits"), f"device {name} containerEdits")
        nodes = tuple(
            r.node(n, f"device {name} deviceNodes")
            for n in r.list(dev_edits.get("deviceNodes"), f"device {name} deviceNodes")
        )
        if name == "all" or not nodes:
            continue
        groups.setdefault(nodes, []).append(name)
    gpus = _gpus(groups)
    libraries: list[str] = []
    binaries: list[str] = []
    extras: list[Extra] = []
    for i, item in enumerate(r.list(edits.get("mounts"), "containerEdits.mounts")):
        m = r.map(item, f"mounts[{i}]")
        host = r.path_of(m.get("hostPath"), f"mounts[{i}] hostPath")
        target = r.path_of(m.get("containerPath"), f"mounts[{i}] containerPath")
        if not host.startswith(FILE_PLACES):
            raise r.fail(f"mounts[{i}] hostPath {host} is not where drivers install files")
        if target.startswith(("/proc/", "/sys/", "/dev/")) or target in _PSEUDO:
            raise r.fail(f"mounts[{i}] containerPath {target} is refused")
        real = settings.host(host)
        if not os.path.exists(real):
            raise r.fail(f"mounts[{i}] hostPath {host} does not exist on this host")
        name = os.path.basename(host)
        if catalog.library_name(name) and os.path.isfile(real):
            libraries.append(host)
        elif "/bin/" in host or "/sbin/" in host:
            binaries.append(host)
        else:
            extras.append(Extra(host, target))
    env = []
    for item in r.list(edits.get("env"), "containerEdits.env"):
        if not isinstance(item, str) or "\0" in item:
            raise r.fail(f"env entry {_show(item)} is not NAME=VALUE")
        name, eq, value = item.partition("=")
        if not eq or not _ENV_NAME.match(name):
            raise r.fail(f"env entry {_show(item)} is not NAME=VALUE")
        if name == "NVIDIA_VISIBLE_DEVICES":  # ucore sets it from the selection
            continue
        if name.startswith("LD_") or name in ("PATH", "PYTHONPATH"):
            raise r.fail(f"env {name} would change what every program in the container loads")
        env.append((name, value))
    notes = _hooks(r, r.list(edits.get("hooks"), "containerEdits.hooks"))
    driver = driver or _driver_of(libraries)
    kept = [p for p in libraries if not driver or catalog.of_driver(os.path.basename(p), driver)]
    if len(kept) < len(libraries):
        notes.append(f"left out {len(libraries) - len(kept)} libraries not of driver {driver}")
    return Inventory(
        f"cdi {path}",
        driver=driver or "",
        gpus=tuple(gpus),
        control=control,
        libraries=tuple(kept),
        binaries=tuple(binaries),
        extras=tuple(extras),
        env=tuple(env),
        notes=tuple(notes),
    )


def _gpus(groups: dict[tuple[str, ...], list[str]]) -> list[Gpu]:
    """Devices with the same nodes are one GPU under several names (``0``, ``GPU-…``)."""
    gpus: list[Gpu] = []
    migs: list[Gpu] = []
    for nodes, names in groups.items():
        index = next((i for n in names if (i := number(n)) is not None), None)
        uuid = next((n for n in names if n.startswith(("GPU-", "MIG-"))), "")
        others = tuple(n for n in names if n != uuid and not n.isdigit())
        if any(n.startswith("/dev/nvidia-caps/") for n in nodes) or uuid.startswith("MIG-"):
            parents = (number(n.partition(":")[0]) for n in names if ":" in n)
            parent = next((i for i in parents if i is not None), -1)
            migs.append(Gpu(-1, uuid, nodes=nodes, names=others, parent=parent))
        else:
            gpus.append(Gpu(index if index is not None else -2, uuid, nodes=nodes, names=others))
    gpus.sort(key=lambda g: (g.number < 0, g.number, g.uuid))
    return [g._replace(number=i) for i, g in enumerate(gpus)] + migs


def _hooks(r: _Reader, hooks: list[Any]) -> list[str]:
    """What the spec's hooks would have done, and whether ucore does it instead."""
    notes = []
    for i, item in enumerate(hooks):
        hook = r.map(item, f"hooks[{i}]")
        args = [a for a in r.list(hook.get("args"), f"hooks[{i}] args") if isinstance(a, str)]
        path = hook.get("path")
        program = os.path.basename(path) if isinstance(path, str) else _show(path)
        verb = next((a for a in args if a in _HOOKS), program)
        notes.append(f"hook {verb}: {_HOOKS.get(verb, 'not run by a rootless engine')}")
    return sorted(set(notes))


_HOOKS = {
    "create-symlinks": "reproduced: each library is bound under its soname and dev name",
    "update-ldcache": "reproduced: the libraries' directory is on LD_LIBRARY_PATH",
    "chmod": "not needed: bound nodes keep their modes",
    "enable-cuda-compat": "not reproduced: the image's compat libraries are not preferred",
    "disable-device-node-modification": "not needed: ucore never creates device nodes",
}


def _driver_of(libraries: list[str]) -> str:
    for path in libraries:
        name = os.path.basename(path)
        if name.startswith("libcuda.so."):
            return name[len("libcuda.so.") :]
    return ""
