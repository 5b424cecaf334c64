"""The PRoot engine: reading ``proot -V``, the seccomp filter, the proot command line, and the
real proot of this host (the workarounds must make recent programs work under it)."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import struct
import subprocess
from pathlib import Path
from typing import Optional

import pytest

from ucore.config import Config
from ucore.plugins.carried import Carried
from ucore.plugins.loading import get_plugin_manager
from ucore.session import Session
from ucore.values.model import Container, Mount, RunSpec
from ucore_proot import discover, seccomp
from ucore_proot.engine import ProotEngine, ProotNoSeccompEngine, _identity
from ucore_proot.watch import MainWatch, exit_status

DEBIAN_V = """ _____ _____              ___
|  __ \\  __ \\_____  _____|   |_
|   __/     /  _  \\/  _  \\    _|
|__|  |__|__\\_____/\\_____/\\____| 5.1.0

built-in accelerators: process_vm = yes, seccomp_filter = no

Visit http://proot.me for help, bug reports, suggestions, patchs, ...
"""
PROOT = shutil.which("proot")
needs_proot = pytest.mark.skipif(PROOT is None, reason="no proot on PATH (apt install proot)")


def test_parse_version() -> None:
    assert discover.parse_version(DEBIAN_V) == ("5.1.0", False)
    upstream = "proot v5.4.0-5f780cba\nbuilt-in accelerators: seccomp_filter = yes"
    assert discover.parse_version(upstream) == ("5.4.0-5f780cba", True)
    assert discover.parse_version("garbage") == ("unknown", False)


def _filter_result(program: bytes, arch: int, nr: int) -> int:
    """A tiny classic-BPF interpreter for the instructions the filter uses."""
    insns = [struct.unpack("=HBBI", program[i : i + 8]) for i in range(0, len(program), 8)]
    data = {0: nr, 4: arch}
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        if code == 0x20:
            acc, pc = data[k], pc + 1
        elif code == 0x15:
            pc += 1 + (jt if acc == k else jf)
        elif code == 0x06:
            return k
        else:  # pragma: no cover
            raise AssertionError(f"unexpected BPF opcode {code:#x}")


def test_seccomp_program_masks_exactly_the_given_calls() -> None:
    arch = 0xC000003E
    program = seccomp.program(arch, [332, 439, 435])
    for nr in (332, 439, 435):
        assert _filter_result(program, arch, nr) == 0x00050000 | errno.ENOSYS
    for nr in (0, 1, 59, 262, 436):
        assert _filter_result(program, arch, nr) == 0x7FFF0000
    assert _filter_result(program, 0x40000003, 332) == 0x7FFF0000  # another ABI: allowed


@pytest.mark.parametrize(
    ("uid", "gid", "args"),
    [
        (None, None, ["-0"]),
        (0, 0, ["-0"]),
        (0, None, ["-0"]),
        (0, 5, ["-i", "0:5"]),
        (1234, 5, ["-i", "1234:5"]),
        (1234, None, ["-i", "1234:1234"]),
        (os.getuid(), os.getgid(), [] if os.getuid() else ["-0"]),
    ],
)
def test_identity(uid: Optional[int], gid: Optional[int], args: list[str]) -> None:
    assert _identity(uid, gid) == args


@pytest.fixture
def session(tmp_path: Path) -> Session:
    return Session(Config(dir=tmp_path / "store"), get_plugin_manager())


def test_no_proot_says_how_to_get_one(tmp_path: Path) -> None:
    path, why = discover.locate({"PATH": str(tmp_path)})
    assert path is None
    assert "apt install proot" in why
    path, why = discover.locate({"UCORE_PROOT": str(tmp_path / "nope")})
    assert path is None and "not an executable" in why


def test_configured_proot(tmp_path: Path) -> None:
    fake = tmp_path / "my-proot"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    conf = tmp_path / "ucore.conf"
    conf.write_text(f"[proot]\npath = {fake}\n")
    configured = Config.load(environ={"UCORE_CONFIG": str(conf)}).section("proot").get("path")
    assert discover.locate({"PATH": ""}, configured) == (
        str(fake),
        "set by path in the [proot] section of ucore.conf",
    )


def test_carried_proot_comes_after_the_configured_one_and_before_path(tmp_path: Path) -> None:
    """The order ucore info reports: configured, carried by the wheel, then PATH."""
    carried_dir = tmp_path / "carried"
    (carried_dir / "bin").mkdir(parents=True)
    own = carried_dir / "bin" / "proot"
    own.write_text("#!/bin/sh\n")
    own.chmod(0o755)
    entry = {"package": "proot", "version": "5.1.0-1.3", "suite": "bookworm"}
    manifest = {"distribution": "ucore-proot", "packages": [{**entry, "files": {"bin/proot": {}}}]}
    carried = Carried(str(carried_dir), manifest)
    on_path = tmp_path / "path"
    on_path.mkdir()
    (on_path / "proot").write_text("#!/bin/sh\n")
    (on_path / "proot").chmod(0o755)
    path, why = discover.locate({"PATH": str(on_path)}, None, carried)
    assert path == str(own)
    assert why == (
        "carried by the ucore-proot wheel: Debian bookworm proot 5.1.0-1.3; none configured"
    )
    path, why = discover.locate(
        {"PATH": str(on_path), "UCORE_PROOT": str(on_path / "proot")}, None, carried
    )
    assert (path, why) == (str(on_path / "proot"), "set by UCORE_PROOT")
    own.chmod(0o644)  # a carried file that lost its execute bit is passed over
    path, why = discover.locate({"PATH": str(on_path)}, None, carried)
    assert (path, why) == (str(on_path / "proot"), "found on PATH; none configured or carried")


@needs_proot
def test_engines_probe_and_describe_this_proot(session: Session) -> None:
    for cls in (ProotEngine, ProotNoSeccompEngine):
        engine = cls(session)
        assert engine.probe() is None
        details = engine.details()
        assert details["proot"].endswith(f"({PROOT}): found on PATH; none configured or carried")
        assert "seccomp acceleration" in details
    cache = session.store.root / "cache" / "proot.json"
    assert cache.is_file()  # the next session pays nothing


def _run(session: Session, spec: RunSpec, cls: type[ProotEngine] = ProotEngine) -> int:
    host = Container(id="host", dir=session.store.root, image="", location="/")
    return cls(session).run(host, spec)


@needs_proot
@pytest.mark.parametrize("cls", [ProotEngine, ProotNoSeccompEngine])
def test_recent_path_syscalls_work_under_this_proot(
    session: Session, tmp_path: Path, cls: type[ProotEngine], capfd: pytest.CaptureFixture[str]
) -> None:
    """``ls -l``/``stat`` (statx) and ``test -x`` (faccessat2) on a path that exists only
    through a bind: wrong under a proot that does not translate them, unless masked."""
    (tmp_path / "f").write_text("x")
    (tmp_path / "f").chmod(0o755)
    script = "stat -c %s /bound/f && ls -l /bound/f >/dev/null && test -x /bound/f && echo ok"
    spec = RunSpec(
        argv=("/bin/sh", "-c", script),
        env=(("PATH", "/usr/bin:/bin"),),
        mounts=(Mount(str(tmp_path), "/bound"),),
    )
    assert _run(session, spec, cls) == 0
    assert capfd.readouterr().out == "1\nok\n"


@needs_proot
def test_exit_status_and_leftovers(session: Session) -> None:
    # "sleep 0.5": the watcher can miss a main process gone within milliseconds under load.
    script = "sleep 30 & sleep 0.5; exit 3"
    spec = RunSpec(argv=("/bin/sh", "-c", script), env=(("PATH", "/usr/bin:/bin"),))
    assert _run(session, spec) == 3
    spec = RunSpec(argv=("/bin/sh", "-c", "kill -TERM $$"), env=(("PATH", "/usr/bin:/bin"),))
    assert _run(session, spec) in (143, 255)  # 255: a kernel without PIDFD_INFO_EXIT


@needs_proot
def test_kernel_probe_matches_what_proot_does(session: Session) -> None:
    engine = ProotEngine(session)
    proot = engine._inspect()
    assert proot is not None
    actual = subprocess.run([proot.path, "-k", "6.0.0", "/bin/true"], check=False).returncode
    assert engine.discovery.kompat_works(proot) == (actual == 0)


def test_exit_status_through_a_pidfd() -> None:
    proc = subprocess.Popen(["sh", "-c", "kill -USR1 $$"])
    fd = os.pidfd_open(proc.pid)
    try:
        proc.wait()
        status = exit_status(fd)
    finally:
        os.close(fd)
    if status is None:
        pytest.skip("this kernel has no PIDFD_INFO_EXIT (Linux 6.15+)")
    assert status == 128 + signal.SIGUSR1


def test_main_watch_without_a_child_gives_up() -> None:
    watch = MainWatch()
    watch.start(os.getpid() + 10_000_000)  # no such process
    watch.join()
    assert watch.status is None
