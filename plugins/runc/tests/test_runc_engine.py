"""The runc and crun engines piece by piece: the generated config, the id mappings, reading
versions and the CVE-2024-21626 backport, the probe's reasons, the state directories, and the
real runtimes of this host through the engine objects (no ucore process in between)."""

from __future__ import annotations

import gzip
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ucore.config import Config
from ucore.plugins.loading import get_plugin_manager
from ucore.session import Session
from ucore.values.errors import IntegrityError, PluginError, UsageError
from ucore.values.model import Container, DeviceNode, Mount, RunSpec
from ucore_runc import discover, launch, spec, subids
from ucore_runc.discover import Runtime
from ucore_runc.engine import CrunEngine, OciEngine, RuncEngine, RuncProotEngine

ROOT_ONLY = pytest.mark.skipif(os.getuid() != 0, reason="needs root")
USER_ONLY = pytest.mark.skipif(os.getuid() == 0, reason="needs an unprivileged user")


# --- identity ---------------------------------------------------------------------------------


def test_default_user_is_root_mapped_onto_the_invoking_user() -> None:
    who = spec.identity(None, None, 1001, 1002, privileged=False)
    assert (who.uid, who.gid) == (0, 0)
    assert who.uids == (spec.IdMap(0, 1001),)
    assert who.gids == (spec.IdMap(0, 1002),)


def test_another_user_is_the_invoking_user_under_its_id() -> None:
    """crun: one id, so what the command writes is the invoking user's on the host."""
    who = spec.identity(1234, 5, 1001, 1002, privileged=False)
    assert (who.uid, who.gid) == (1234, 5)
    assert who.uids == (spec.IdMap(1234, 1001),)
    assert who.gids == (spec.IdMap(5, 1002),)


def test_runc_also_maps_the_containers_root() -> None:
    who = spec.identity(1234, 0, 0, 0, privileged=False, root_uid=1, root_gid=1)
    assert who.uids == (spec.IdMap(1234, 0), spec.IdMap(0, 1))
    assert who.gids == (spec.IdMap(0, 0),)  # gid 0 is the user's own: nothing more needed


def test_root_maps_every_id_onto_itself() -> None:
    who = spec.identity(1234, 5, 0, 0, privileged=True)
    assert (who.uid, who.gid) == (1234, 5)
    assert who.uids == who.gids == (spec.IdMap(0, 0, 4294967295),)


# --- the config -------------------------------------------------------------------------------


def _spec(**fields: Any) -> RunSpec:
    values: dict[str, Any] = {
        "argv": ("sh", "-c", "true"),
        "env": (("PATH", "/bin"), ("HOME", "/root")),
        "cwd": "/work",
        "mounts": (
            Mount(os.path.realpath("/dev"), "/dev"),
            Mount(os.path.realpath("/proc"), "/proc"),
            Mount(os.path.realpath("/sys"), "/sys"),
            Mount("/tmp", "/data", readonly=True),
        ),
        "devices": (DeviceNode("/dev/null", "/dev/gpu0"),),
    }
    values.update(fields)
    return RunSpec(**values)


def _by_target(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["destination"]: m for m in config["mounts"]}


def test_config_shape() -> None:
    who = spec.identity(None, None, 1001, 1001, privileged=False)
    config = spec.config(_spec(), Path("/containers/c/ROOT"), who, proc=False, terminal=False)
    assert config["root"] == {"path": "/containers/c/ROOT", "readonly": False}
    process = config["process"]
    assert process["args"] == ["sh", "-c", "true"]
    assert process["env"] == ["PATH=/bin", "HOME=/root"]
    assert process["cwd"] == "/work"
    assert process["user"] == {"uid": 0, "gid": 0}
    assert process["terminal"] is False
    assert process["noNewPrivileges"] is True
    assert "CAP_CHOWN" in process["capabilities"]["effective"]
    linux = config["linux"]
    assert linux["namespaces"] == [{"type": "mount"}, {"type": "user"}]  # no net, pid, ipc, uts
    assert "resources" not in linux and "cgroupsPath" not in linux
    assert linux["uidMappings"] == [{"containerID": 0, "hostID": 1001, "size": 1}]


def test_config_mounts() -> None:
    who = spec.identity(None, None, 1001, 1001, privileged=False)
    config = spec.config(_spec(), Path("/r"), who, proc=False, terminal=False)
    mounts = _by_target(config)
    assert mounts["/proc"]["source"] == "/proc" and "rbind" in mounts["/proc"]["options"]
    assert mounts["/dev"]["type"] == "tmpfs"  # not the host's /dev
    assert mounts["/dev/pts"]["type"] == "devpts"
    assert "ro" in mounts["/sys"]["options"]
    assert "ro" in mounts["/data"]["options"]
    assert mounts["/dev/gpu0"]["source"] == "/dev/null"
    targets = [m["destination"] for m in config["mounts"]]
    assert targets.index("/dev") < targets.index("/dev/gpu0")  # devices land in the new /dev
    assert targets.count("/dev") == 1


def test_nosysdirs_keeps_only_what_the_runtime_needs() -> None:
    who = spec.identity(None, None, 1001, 1001, privileged=False)
    bare = _spec(mounts=())
    crun = _by_target(spec.config(bare, Path("/r"), who, proc=False, terminal=False))
    runc = _by_target(spec.config(bare, Path("/r"), who, proc=True, terminal=False))
    assert "/proc" not in crun and "/sys" not in crun
    assert "/proc" in runc and "/sys" not in runc
    assert crun["/dev/shm"]["type"] == "tmpfs"  # a private one, not the host's


def test_other_users_get_no_capabilities() -> None:
    who = spec.identity(1234, 5, 1001, 1001, privileged=False)
    caps = spec.config(_spec(), Path("/r"), who, proc=False, terminal=True)["process"]
    assert caps["terminal"] is True
    assert caps["capabilities"]["effective"] == caps["capabilities"]["permitted"] == []


def test_binds_repeat_the_flags_the_kernel_locked(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rootless runtime's read-only remount fails with EPERM without them."""

    class Flags:
        f_flag = os.ST_NOSUID | os.ST_NODEV | os.ST_NOEXEC | os.ST_NOATIME

    monkeypatch.setattr(os, "statvfs", lambda path: Flags())
    options = spec.bind("/src", "/dst", readonly=True)["options"]
    assert options == ["rbind", "ro", "nosuid", "nodev", "noexec", "noatime"]
    assert spec.bind("/src", "/dst")["options"][:2] == ["rbind", "rw"]


@pytest.mark.parametrize(
    ("plant", "message"),
    [
        (lambda p: p.symlink_to("/proc/1/root"), "is a symbolic link (to /proc/1/root)"),
        (lambda p: p.write_text("x"), "is not a directory"),
    ],
)
def test_an_image_dev_that_is_no_directory_is_refused(
    tmp_path: Path, plant: Any, message: str
) -> None:
    (tmp_path / "proc").mkdir()
    plant(tmp_path / "dev")
    why = spec.check_root(tmp_path, ["/proc", "/dev", "/sys"])  # /sys missing: created later
    assert why is not None and why.startswith("the image's /dev ") and message in why
    assert spec.check_root(tmp_path, ["/proc", "/sys"]) is None


def test_needed_roots() -> None:
    assert spec.needed_roots(sysdirs=True, proc=False) == ["/proc", "/dev", "/sys"]
    assert spec.needed_roots(sysdirs=False, proc=True) == ["/proc", "/dev"]
    assert spec.needed_roots(sysdirs=False, proc=False) == ["/dev"]


# --- versions, the CVE, the host --------------------------------------------------------------


def test_parse_version() -> None:
    text = "runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1+deb12u1\nspec: 1.0.2-dev\n"
    assert discover.parse_version(text) == "1.1.5+ds1"
    assert discover.parse_version("crun version 1.8.1\ncommit: f8a0\n") == "1.8.1"
    assert discover.parse_version("runc version v1.2.0-rc.1\n") == "1.2.0-rc.1"
    assert discover.parse_version("garbage") == "unknown"
    assert discover.version_numbers("1.1.5+ds1") == (1, 1, 5)
    assert discover.version_numbers("1.2") == (1, 2, 0)


@pytest.mark.parametrize(
    ("runtime", "refused"),
    [
        (Runtime("/x/runc", "runc", "1.1.5+ds1"), True),
        (Runtime("/x/runc", "runc", "1.1.11"), True),
        (Runtime("/x/runc", "runc", "1.1.5+ds1", backport="runc (1.1.5+ds1-1+deb12u1)"), False),
        (Runtime("/x/runc", "runc", "1.1.12"), False),
        (Runtime("/x/runc", "runc", "1.2.0-rc.1"), False),
        (Runtime("/x/crun", "crun", "0.9"), False),  # not runc's flaw
    ],
)
def test_cve_2024_21626(runtime: Runtime, refused: bool) -> None:
    why = discover.cve_refusal(runtime)
    assert (why is not None) == refused
    if why is not None:
        assert "CVE-2024-21626" in why and "1.1.12" in why and runtime.version in why


def _package(tmp_path: Path, binary: Path, changelog: str, owns: bool = True) -> tuple[str, str]:
    info = tmp_path / "info"
    doc = tmp_path / "doc" / "runc"
    info.mkdir(parents=True)
    doc.mkdir(parents=True)
    files = [str(binary)] if owns else ["/usr/sbin/other"]
    (info / "runc.list").write_text("\n".join(["/.", "/usr", *files]) + "\n")
    with gzip.open(doc / "changelog.Debian.gz", "wt") as f:
        f.write(changelog)
    return str(info), str(tmp_path / "doc")


def test_debian_backport(tmp_path: Path) -> None:
    binary = tmp_path / "runc"
    binary.write_text("")
    entry = "runc (1.1.5+ds1-1+deb12u1) bookworm-security; urgency=high"
    changelog = f"{entry}\n\n  * CVE-2024-21626: several container breakouts\n"
    info, doc = _package(tmp_path, binary, changelog)
    assert discover.debian_backport(str(binary), info=info, doc=doc) == entry


def test_no_backport_without_the_cve_or_for_another_file(tmp_path: Path) -> None:
    binary = tmp_path / "runc"
    binary.write_text("")
    info, doc = _package(tmp_path / "a", binary, "runc (1.1.5+ds1-1) unstable\n")
    assert discover.debian_backport(str(binary), info=info, doc=doc) is None
    changelog = "runc (1.1.5+ds1-1+deb12u1)\n * CVE-2024-21626\n"
    info, doc = _package(tmp_path / "b", binary, changelog, owns=False)
    assert discover.debian_backport(str(binary), info=info, doc=doc) is None


def test_this_hosts_runc_is_accepted_only_for_a_reason() -> None:
    path, _ = discover.locate("runc")
    if path is None:
        pytest.skip("no runc here")
    version = discover.parse_version(
        subprocess.run([path, "--version"], capture_output=True, text=True).stdout
    )
    if discover.version_numbers(version) < discover.FIXED_RUNC:
        assert discover.debian_backport(path) is not None


@pytest.mark.parametrize(
    ("values", "privileged", "expected"),
    [
        ({"user.max_user_namespaces": 0}, True, "user.max_user_namespaces=0"),
        ({"kernel.unprivileged_userns_clone": 0}, False, "kernel.unprivileged_userns_clone=0"),
        ({"kernel.unprivileged_userns_clone": 0}, True, None),
        ({"user.max_user_namespaces": 15000, "kernel.unprivileged_userns_clone": 1}, False, None),
    ],
)
def test_userns_refusal(values: dict[str, Any], privileged: bool, expected: Any) -> None:
    why = discover.userns_refusal(values, privileged)
    assert why == expected if expected is None else expected in why


def test_locate(tmp_path: Path) -> None:
    path, why = discover.locate("runc", {"UCORE_RUNC": str(tmp_path / "none"), "PATH": ""})
    assert path is None and "is not an executable file" in why
    path, why = discover.locate("crun", {"PATH": str(tmp_path), "HOME": str(tmp_path)})
    if path is None:  # it may still be in an sbin directory
        assert "apt install crun" in why
    fake = tmp_path / "runc"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert discover.locate("runc", {"PATH": str(tmp_path)}) == (str(fake), "")
    conf = tmp_path / "ucore.conf"
    conf.write_text(f"[crun]\npath = {fake}\n")
    configured = Config.load(environ={"UCORE_CONFIG": str(conf)}).section("crun").get("path")
    assert discover.locate("crun", {"PATH": ""}, configured) == (str(fake), "")


def test_subordinate_ids(tmp_path: Path) -> None:
    if subids._helper("uid") is None:
        pytest.skip("no newuidmap (package uidmap)")
    table = tmp_path / "subuid"
    table.write_text(f"someone:200000:65536\n{os.getuid()}:300000:65536\n")
    assert subids.subordinate("uid", os.getuid(), str(table)) == 300000
    table.write_text("someone:200000:65536\n")
    assert subids.subordinate("uid", os.getuid(), str(table)) is None


def test_trial_results_are_cached_and_failures_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = discover.Discovery(tmp_path / "cache.json")
    calls: list[int] = []

    def attempt(result: Any) -> Any:
        def run() -> Any:
            calls.append(1)
            return result

        return run

    assert found.trial("ok", attempt(None)) is None
    assert found.trial("ok", attempt("broken")) is None  # cached
    assert found.trial("bad", attempt("broken")) == "broken"
    assert found.trial("bad", attempt(None)) == "broken"  # cached for a while
    assert len(calls) == 2
    later = time.time() + discover.RETRY_FAILED + 1
    monkeypatch.setattr(time, "time", lambda: later)
    assert found.trial("bad", attempt(None)) is None
    assert len(calls) == 3


# --- state directories ------------------------------------------------------------------------


def _session(tmp_path: Path) -> Session:
    plugins = get_plugin_manager()
    return Session(Config(dir=tmp_path / "store"), plugins)


def test_state_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _session(tmp_path).store
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    assert launch.state_base(store).parent == store.tmp
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert launch.state_base(store) == tmp_path / "ucore"
    monkeypatch.setenv("XDG_RUNTIME_DIR", "relative/path")
    assert launch.state_base(store).parent == store.tmp


def test_stale_bundles_of_dead_runs_are_removed(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    runtime = Runtime("/bin/false", "runc", "1.1.12")
    bundles = tmp_path / "bundles"
    mine = bundles / f"ucore-{os.getpid()}-0123abcd"
    gone = bundles / f"ucore-{dead.pid}-0123abcd"
    other = bundles / "not-ours"
    for path in (mine, gone, other):
        path.mkdir(parents=True)
    launch.reap_stale(runtime, tmp_path, [])
    assert mine.exists() and other.exists() and not gone.exists()


def test_a_run_makes_private_directories_and_removes_them(tmp_path: Path) -> None:
    runtime = Runtime(shutil.which("true") or "/bin/true", "runc", "1.1.12")
    run = launch.Run(runtime, tmp_path / "base", ["--x"])
    run.write_config({"ociVersion": spec.OCI_VERSION})
    for path in (tmp_path / "base", run.root, run.bundles, run.bundle):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
    argv = run.command(detach=True)
    assert argv[:4] == [runtime.path, "--root", str(run.root), "--x"]
    assert argv[-2:] == ["--detach", run.id]
    (run.root / run.id).mkdir()
    (run.root / run.id / "state.json").write_text('{"cgroup_paths": {"": "/nonexistent"}}')
    run.cleanup()
    assert not (run.root / run.id).exists() and not run.bundle.exists()


# --- the engines, for real --------------------------------------------------------------------


def _engine(cls: type[OciEngine], tmp_path: Path) -> OciEngine:
    engine = cls(_session(tmp_path))
    why = engine.probe()
    if why is not None:
        pytest.skip(f"{engine.name} cannot run here: {why}")
    return engine


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    """A root filesystem of static busybox."""
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("no busybox (apt install busybox-static)")
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    shutil.copy(busybox, root / "bin" / "busybox")
    for name in ("sh", "cat", "id", "sleep"):
        (root / "bin" / name).symlink_to("busybox")
    return root


_ERRORS = {cls.__name__: cls for cls in (IntegrityError, PluginError, UsageError)}


def _run(engine: OciEngine, root: Path, tmp_path: Path, *argv: str, **fields: Any) -> int:
    """``engine.run`` in a child process: a detached run makes its process a subreaper that
    ends all its children afterwards, which pytest's own process must not become."""
    return _start(engine, root, tmp_path, *argv, **fields).status()


class _Started:
    """A child process running ``engine.run``; it reports the status or the error."""

    def __init__(self, pid: int, report: int) -> None:
        self.pid = pid
        self.report = report

    def status(self) -> int:
        with os.fdopen(self.report) as f:
            kind, _, message = f.read().partition("\n")
        os.waitpid(self.pid, 0)
        if kind in _ERRORS:
            raise _ERRORS[kind](message)
        return int(kind)


def _start(engine: OciEngine, root: Path, tmp_path: Path, *argv: str, **fields: Any) -> _Started:
    directory = tmp_path / "c"
    directory.mkdir(exist_ok=True)
    container = Container(id="c", dir=directory, image="", location=root)
    report_r, report_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        os.close(report_r)
        try:
            status = engine.run(container, RunSpec(argv=argv, env=(("PATH", "/bin"),), **fields))
            os.write(report_w, f"{status}\n".encode())
        except Exception as exc:  # noqa: BLE001 - the parent re-raises it
            os.write(report_w, f"{type(exc).__name__}\n{exc}".encode())
        os._exit(0)
    os.close(report_w)
    return _Started(pid, report_r)


@pytest.mark.parametrize("cls", [RuncEngine, CrunEngine])
def test_engine_runs_and_leaves_nothing(
    cls: type[OciEngine], rootfs: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    engine = _engine(cls, tmp_path)
    assert _run(engine, rootfs, tmp_path, "sh", "-c", "id -u; exit 3") == 3
    assert capfd.readouterr().out == "0\n"
    base = launch.state_base(engine.session.store)
    assert os.listdir(base / engine.kind) == [] and os.listdir(base / "bundles") == []


@pytest.mark.parametrize("cls", [RuncEngine, CrunEngine])
def test_engine_refuses_what_it_cannot_do(
    cls: type[OciEngine], rootfs: Path, tmp_path: Path
) -> None:
    engine = _engine(cls, tmp_path)
    with pytest.raises(PluginError, match="--kernel"):
        _run(engine, rootfs, tmp_path, "true", kernel="6.1.0")
    (rootfs / "dev").symlink_to("/proc/1/root")
    with pytest.raises(IntegrityError, match="/dev is a symbolic link"):
        _run(engine, rootfs, tmp_path, "true")


@USER_ONLY
def test_runc_as_another_user_without_subordinate_ids_says_what_to_do(
    rootfs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = _engine(RuncEngine, tmp_path)
    monkeypatch.setattr(subids, "subordinate", lambda *a, **k: None)
    with pytest.raises(PluginError, match="crun"):
        _run(engine, rootfs, tmp_path, "true", uid=1234, gid=5)


def test_a_signal_held_while_the_runtime_started_is_given_to_the_command() -> None:
    """``run_detached`` passes on what came before the main process was known; tested in a
    child process that plays ucore (a subreaper whose leftovers are ended)."""
    report_r, report_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - reports through the pipe
        mask = {*launch.spawn.FORWARDED, signal.SIGCHLD}
        signal.pthread_sigmask(signal.SIG_BLOCK, mask)
        main = os.fork()
        if main == 0:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, mask)
            time.sleep(30)
            os._exit(0)
        status = launch._wait(main, mask, signal.SIGTERM)
        os.write(report_w, str(status).encode())
        os._exit(0)
    os.close(report_w)
    with os.fdopen(report_r) as f:
        status = f.read()
    os.waitpid(pid, 0)
    assert status == str(128 + signal.SIGTERM)


def test_a_trial_failing_under_apparmors_restriction_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if discover.locate("runc")[0] is None:
        pytest.skip("no runc here")
    values = dict(discover.sysctls(), **{"kernel.apparmor_restrict_unprivileged_userns": 1})
    monkeypatch.setattr(discover, "sysctls", lambda: values)
    monkeypatch.setattr(os, "getuid", lambda: 1000)
    monkeypatch.setattr(OciEngine, "_trial", lambda self: "runc cannot start: EPERM")
    why = RuncEngine(_session(tmp_path)).probe()
    assert why is not None and "restricted by AppArmor" in why and "EPERM" in why


def test_r2_r3_are_explained(tmp_path: Path) -> None:
    engine = RuncProotEngine(_session(tmp_path))
    assert "not supported" in (engine.probe() or "")
    with pytest.raises(PluginError, match="R2/R3"):
        engine.run(Container(id="c", dir=tmp_path, image=""), RunSpec(argv=("true",)))


@ROOT_ONLY
def test_root_runs_with_ids_mapped_onto_themselves(rootfs: Path, tmp_path: Path) -> None:
    engine = _engine(CrunEngine, tmp_path)
    out = tmp_path / "out"
    out.mkdir(mode=0o777)
    out.chmod(0o777)
    mount = (Mount(str(out), "/out"),)
    script = "echo x > /out/f"
    assert _run(engine, rootfs, tmp_path, "sh", "-c", script, uid=1234, mounts=mount) == 0
    assert (out / "f").stat().st_uid == 1234


# --- mount points of transient mounts ---------------------------------------------------------

#: Where the transient mounts of these tests go: nothing of them is in the image.
LIBRARY = "/usr/local/x/lib/f"
#: What each run named NAME writes through its (non-transient) volume at /sync: the library in
#: NAME, then NAME-up; then it waits for NAME-go.
WAIT = (
    f'cat {LIBRARY} > /sync/"$0"; : > /sync/"$0"-up;'
    ' while [ ! -e /sync/"$0"-go ]; do sleep 0.02; done'
)


@pytest.fixture
def image_root(rootfs: Path) -> Path:
    """The busybox root with what an image has (``/dev``, ``/proc``, ``/usr``) and a directory
    for the tests' volume, so that only transient mounts lack their mount points."""
    for name in ("dev", "proc", "usr/share", "sync"):
        (rootfs / name).mkdir(parents=True)
    (rootfs / "usr" / "share" / "keep").write_text("x")
    return rootfs


@pytest.fixture
def sync(tmp_path: Path) -> Iterator[Path]:
    """The tests' volume; every run still waiting on it is let go at the end."""
    path = tmp_path / "sync"
    path.mkdir()
    yield path
    for name in ("a", "b"):
        (path / f"{name}-go").touch()


def _tree(root: Path) -> dict[str, tuple[int, object]]:
    """Every path under ``root``: its mode (type included) and size (files) or target (links)."""
    tree: dict[str, tuple[int, object]] = {}
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(top, name)
            st = path.lstat()
            detail: object = st.st_size if stat.S_ISREG(st.st_mode) else None
            if stat.S_ISLNK(st.st_mode):
                detail = os.readlink(path)
            tree[str(path.relative_to(root))] = (st.st_mode, detail)
    return tree


def _transient(tmp_path: Path) -> dict[str, Any]:
    """RunSpec fields: a library file, a directory and two device nodes bound for this run only,
    and the tests' volume."""
    library = tmp_path / "libcuda.so.1"
    library.write_text("driver\n")
    libraries = tmp_path / "lib64"
    libraries.mkdir(exist_ok=True)
    (libraries / "g").write_text("lib64\n")
    device = tmp_path / "nvidia0"
    device.write_text("device\n")
    mounts = (
        Mount(str(library), LIBRARY, readonly=True, transient=True),
        Mount(str(libraries), "/opt/gpu/lib64", readonly=True, transient=True),
        Mount(str(tmp_path / "sync"), "/sync"),
    )
    devices = (DeviceNode(str(device), "/dev/fake0"), DeviceNode(str(device), "/opt/gpu/dev1"))
    return {"mounts": mounts, "devices": devices}


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + 30
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


@pytest.mark.parametrize("cls", [RuncEngine, CrunEngine])
@pytest.mark.parametrize("as_user", [False, True], ids=["default-user", "as-invoking-user"])
def test_mount_points_of_transient_mounts_are_removed(
    cls: type[OciEngine],
    as_user: bool,
    *,
    image_root: Path,
    sync: Path,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """ucore makes them (directories, empty files) and removes them afterwards; a volume's
    mount point stays, and so does a directory it shares with a transient one. With ``-u``
    the invoking user (an MPI rank under PMIx) an unprivileged runc maps the container's root
    to an ``/etc/subuid`` id: mount points runc made then belonged to that id and stayed."""
    engine = _engine(cls, tmp_path)
    before = _tree(image_root)
    fields = _transient(tmp_path)
    fields["mounts"] += (Mount(str(sync), "/opt/data"),)
    if as_user:
        fields.update(uid=os.getuid(), gid=os.getgid())
    script = f"cat {LIBRARY} /opt/gpu/lib64/g /dev/fake0 /opt/gpu/dev1"
    assert _run(engine, image_root, tmp_path, "sh", "-c", script, **fields) == 0
    assert capfd.readouterr().out == "driver\nlib64\ndevice\ndevice\n"
    after = _tree(image_root)
    assert all(stat.S_ISDIR(after.pop(path)[0]) for path in ("opt", "opt/data"))
    assert after == before


@pytest.mark.parametrize("cls", [RuncEngine, CrunEngine])
@pytest.mark.parametrize("last", ["a", "b"])
def test_the_last_of_overlapping_runs_removes_them(
    cls: type[OciEngine], last: str, image_root: Path, sync: Path, tmp_path: Path
) -> None:
    """Run b starts while run a holds the mount points; whichever ends first leaves them to
    the other (b recorded none: a's runtime had made them)."""
    engine = _engine(cls, tmp_path)
    before = _tree(image_root)
    fields = _transient(tmp_path)
    runs = {}
    for name in ("a", "b"):
        runs[name] = _start(engine, image_root, tmp_path, "sh", "-c", WAIT, name, **fields)
        _wait_for(sync / f"{name}-up")
        assert (sync / name).read_text() == "driver\n"
    first = "b" if last == "a" else "a"
    (sync / f"{first}-go").touch()
    assert runs[first].status() == 0
    assert (image_root / LIBRARY.lstrip("/")).is_file()  # the other run still uses it
    (sync / f"{last}-go").touch()
    assert runs[last].status() == 0
    assert _tree(image_root) == before


@pytest.mark.parametrize("cls", [RuncEngine, CrunEngine])
@pytest.mark.parametrize("planted", ["usr/local/x", "usr/local/x/lib/f"])
def test_a_link_planted_at_a_mount_point_is_not_followed(
    cls: type[OciEngine], planted: str, image_root: Path, sync: Path, tmp_path: Path
) -> None:
    """While the run is active, its mount point (a directory on the way, or the file itself)
    becomes a link to a host path that holds an empty directory and file under the same names:
    those stay, and so does the link."""
    engine = _engine(cls, tmp_path)
    victim = tmp_path / "victim"
    (victim / "lib").mkdir(parents=True)
    (victim / "lib" / "f").touch()
    target = victim if planted == "usr/local/x" else victim / "lib" / "f"
    run = _start(engine, image_root, tmp_path, "sh", "-c", WAIT, "a", **_transient(tmp_path))
    _wait_for(sync / "a-up")
    link = image_root / planted
    link.rename(link.with_name("moved"))
    link.symlink_to(target)
    (sync / "a-go").touch()
    assert run.status() == 0
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert (victim / "lib").is_dir() and (victim / "lib" / "f").is_file()


@pytest.mark.parametrize("cls", [RuncEngine, CrunEngine])
def test_a_killed_runs_mount_points_are_removed_by_the_next(
    cls: type[OciEngine], image_root: Path, sync: Path, tmp_path: Path
) -> None:
    """``kill -9`` of ucore leaves them; the next run, transient mounts or not, removes them."""
    engine = _engine(cls, tmp_path)
    before = _tree(image_root)
    killed = _start(engine, image_root, tmp_path, "sh", "-c", WAIT, "a", **_transient(tmp_path))
    _wait_for(sync / "a-up")
    os.kill(killed.pid, signal.SIGKILL)
    os.waitpid(killed.pid, 0)
    os.close(killed.report)
    assert (image_root / LIBRARY.lstrip("/")).is_file()
    # the next run also ends the killed run's command
    assert _run(engine, image_root, tmp_path, "sh", "-c", ":") == 0
    assert _tree(image_root) == before
