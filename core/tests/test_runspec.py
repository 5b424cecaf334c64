"""The run specification: Docker's rules for command, environment, user, working directory and
volumes, and the image-config hazards of safety rule 9, on a small root built per test."""

from __future__ import annotations

import os
import pwd
import stat
import threading
import time
from pathlib import Path
from typing import Any, Optional

import pytest

from ucore.running import hostauth, runspec
from ucore.running.runspec import RunOptions
from ucore.storage import inroot
from ucore.values.errors import (
    CommandNotExecutableError,
    CommandNotFoundError,
    IntegrityError,
    PluginError,
    UsageError,
)
from ucore.values.model import Container, DeviceNode, Mount, RunSpec

PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:App:/home/app:/bin/sh\n"
GROUP = "root:x:0:\napp:x:1000:\nstaff:x:50:\n"


class FakeSession:
    """What ``runspec.build`` needs of a session: the plugins' ``ucore_prepare`` results."""

    def __init__(self, results: Optional[list[dict[str, Any]]] = None) -> None:
        self.results = results or []

    def prepare(self, container: Container, spec: RunSpec) -> list[dict[str, Any]]:
        return self.results


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "ROOT"
    for d in ("bin", "etc", "tmp", "proc", "home/app", "usr/lib"):
        (r / d).mkdir(parents=True)
    (r / "etc" / "passwd").write_text(PASSWD)
    (r / "etc" / "group").write_text(GROUP)
    for name in ("sh", "true", "env"):
        (r / "bin" / name).write_text("#!/bin/sh\n")
        (r / "bin" / name).chmod(0o755)
    (r / "lib").symlink_to("/usr/lib")
    return r


def build(
    root: Path,
    config: Optional[dict[str, Any]] = None,
    results: Optional[list[dict[str, Any]]] = None,
    environ: Optional[dict[str, str]] = None,
    **opts: Any,
) -> RunSpec:
    container = Container(id="t", dir=root.parent, image="", location=root)
    opts.setdefault("sysdirs", False)
    opts.setdefault("hostauth", False)
    return runspec.build(
        FakeSession(results),  # type: ignore[arg-type]
        container,
        {"config": config or {"Cmd": ["sh"]}},
        RunOptions(**opts),
        environ=environ if environ is not None else {"TERM": "xterm", "SECRET": "no"},
    )


# --- command --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "opts", "argv"),
    [
        ({"Cmd": ["sh"]}, {}, ("sh",)),
        ({"Cmd": ["sh"]}, {"command": ("true", "x")}, ("true", "x")),
        ({"Entrypoint": ["env"], "Cmd": ["A=1"]}, {}, ("env", "A=1")),
        ({"Entrypoint": ["env"], "Cmd": ["A=1"]}, {"command": ("B=2",)}, ("env", "B=2")),
        ({"Entrypoint": ["env"], "Cmd": ["A=1"]}, {"entrypoint": "true"}, ("true",)),
        ({"Entrypoint": ["env"], "Cmd": ["A=1"]}, {"entrypoint": "", "command": ("sh",)}, ("sh",)),
        ({"Cmd": ["sh"]}, {"meta": False, "command": ("true",)}, ("true",)),
    ],
)
def test_entrypoint_and_cmd(root: Path, config: dict, opts: dict, argv: tuple) -> None:
    assert build(root, config, **opts).argv == argv


def test_nothing_to_run_is_a_usage_error(root: Path) -> None:
    with pytest.raises(UsageError, match="no command"):
        build(root, {"Entrypoint": ["env"]}, entrypoint="")


def test_malformed_config_is_refused(root: Path) -> None:
    with pytest.raises(IntegrityError):
        build(root, {"Cmd": "sh -c true"})
    with pytest.raises(IntegrityError):
        build(root, {"Cmd": ["sh"], "Env": [1, 2]})


@pytest.mark.parametrize(
    "config",
    [
        {"Cmd": ["s\0h"]},
        {"Entrypoint": ["sh", "-c\0"]},
        {"Cmd": ["sh"], "Env": ["A=b\0c"]},
        {"Cmd": ["sh"], "Env": ["A\0=b"]},
        {"Cmd": ["sh"], "WorkingDir": "/tmp\0/x"},
        {"Cmd": ["sh"], "User": "app\0"},
    ],
)
def test_nul_bytes_in_the_config_are_refused(root: Path, config: dict[str, Any]) -> None:
    """No path, argument or environment entry can hold one: each would fail, later and
    somewhere else (a stat, an ``execve``, a runtime's JSON), as an internal error."""
    with pytest.raises(IntegrityError, match="NUL"):
        build(root, config)


def test_command_not_found_and_not_executable(root: Path) -> None:
    with pytest.raises(CommandNotFoundError, match="nope"):
        build(root, command=("nope",))
    with pytest.raises(CommandNotExecutableError):
        build(root, command=("/etc/passwd",))
    with pytest.raises(CommandNotExecutableError):
        build(root, command=("/etc",))


def test_command_found_in_a_volume(root: Path, tmp_path: Path) -> None:
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "tool").write_text("#!/bin/sh\n")
    (tools / "tool").chmod(0o755)
    spec = build(root, command=("tool",), volumes=(f"{tools}:/opt/bin",), env=("PATH=/opt/bin",))
    assert spec.argv == ("tool",)


# --- environment ----------------------------------------------------------------------------------


def test_environment_order_and_defaults(root: Path, tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("  # comment\n\nF=file\nBOTH=file\nIMG=file\nFROM_HOST\nV= kept  \n")
    spec = build(
        root,
        {"Cmd": ["sh"], "Env": ["IMG=image", "KEEP=image"]},
        environ={"TERM": "vt100", "FROM_HOST": "h", "E": "host-e", "SECRET": "no"},
        env_files=(str(env_file),),
        env=("BOTH=flag", "E", "UNSET_ON_HOST"),
    )
    assert dict(spec.env) == {
        "TERM": "vt100",
        "IMG": "file",
        "KEEP": "image",
        "F": "file",
        "BOTH": "flag",
        "FROM_HOST": "h",
        "V": " kept  ",
        "E": "host-e",
        "PATH": runspec.DEFAULT_PATH,
        "HOME": "/root",
    }


def test_environment_is_clean_unless_hostenv(root: Path) -> None:
    env = dict(build(root).env)
    assert "SECRET" not in env
    assert env["TERM"] == "xterm"
    assert env["PATH"] == runspec.DEFAULT_PATH
    hostenv = dict(build(root, {"Cmd": ["sh"], "Env": ["SECRET=image"]}, hostenv=True).env)
    assert hostenv["SECRET"] == "image"  # the image's Env still wins over the host's


def test_env_file_names_with_whitespace_are_refused(root: Path, tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("BAD NAME=1\n")
    with pytest.raises(UsageError, match="whitespace"):
        build(root, env_files=(str(env_file),))
    with pytest.raises(UsageError):
        build(root, env_files=(str(tmp_path / "missing"),))


def test_env_file_is_read_as_docker_reads_it(tmp_path: Path) -> None:
    """Lines end at ``\\n`` only (a ``\\r`` before it goes, as for a file written on Windows);
    a UTF-8 byte order mark at the start is not part of the first name; a form feed or a
    Unicode line separator in a value is part of the value."""
    env_file = tmp_path / "env"
    env_file.write_bytes(b"\xef\xbb\xbfA=1\r\nB=x\x0cy\nC=\xe2\x80\xa8z\r\n\r\nD=last")
    pairs = runspec.parse_env_file(str(env_file), {})
    assert pairs == [("A", "1"), ("B", "x\x0cy"), ("C", "\u2028z"), ("D", "last")]


@pytest.mark.parametrize(
    ("content", "error"),
    [(b"A=1\nB=x\x00y\n", "line 2: NUL byte"), (b"\xffA=1\n", "codec"), (b"=1\n", "no variable")],
)
def test_env_file_errors_are_one_line(tmp_path: Path, content: bytes, error: str) -> None:
    env_file = tmp_path / "env"
    env_file.write_bytes(content)
    with pytest.raises(UsageError, match=error) as caught:
        runspec.parse_env_file(str(env_file), {})
    assert "\n" not in str(caught.value)


def test_env_file_that_never_ends_is_refused() -> None:
    """``--env-file /dev/zero`` (a slip of the keyboard) must not read until memory runs out."""
    with pytest.raises(UsageError, match="larger than"):
        runspec.parse_env_file("/dev/zero", {})


def test_plugin_env_never_overrides_the_users(root: Path) -> None:
    results = [{"env": {"CUDA_VISIBLE_DEVICES": "0", "MINE": "plugin", "IMG": "plugin"}}]
    spec = build(root, {"Cmd": ["sh"], "Env": ["IMG=image"]}, results=results, env=("MINE=user",))
    env = dict(spec.env)
    assert (env["CUDA_VISIBLE_DEVICES"], env["MINE"], env["IMG"]) == ("0", "user", "plugin")


def test_plugin_results_are_checked(root: Path) -> None:
    with pytest.raises(PluginError):
        build(root, results=[{"mounts": [("/a", "/b")]}])
    spec = build(root, results=[{"devices": [DeviceNode("/dev/null")]}])
    assert DeviceNode("/dev/null") in spec.devices


# --- user -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "ids", "home"),
    [
        (None, (None, None), "/root"),
        ("app", (1000, 1000), "/home/app"),
        ("1000", (1000, 1000), "/home/app"),
        ("app:staff", (1000, 50), "/home/app"),
        ("app:7", (1000, 7), "/home/app"),
        ("4242", (4242, 0), "/"),
        ("0", (0, 0), "/root"),
    ],
)
def test_user(root: Path, user: Optional[str], ids: tuple, home: str) -> None:
    spec = build(root, user=user)
    assert (spec.uid, spec.gid) == ids
    assert dict(spec.env)["HOME"] == home


def test_image_user_and_unknown_names(root: Path) -> None:
    assert build(root, {"Cmd": ["sh"], "User": "app"}).uid == 1000
    with pytest.raises(UsageError, match="no user 'ghost'"):
        build(root, user="ghost")
    with pytest.raises(UsageError, match="no group 'ghosts'"):
        build(root, user="app:ghosts")
    with pytest.raises(IntegrityError):
        build(root, {"Cmd": ["sh"], "User": "ghost"})


def test_user_and_group_ids_are_ascii_numbers_in_range(root: Path) -> None:
    """``str.isdigit`` takes ``²`` and ``٣``, and ``int`` refuses numbers of over 4300 digits:
    a User, a ``-u`` or an account line with those was an internal error, and an id beyond 32
    bits reached the engine."""
    huge = "9" * 5000
    for user in ("²", "0:²", f"0:{huge}", "app:٣"):
        with pytest.raises(IntegrityError, match=r"no (user|group)|not a valid"):
            build(root, {"Cmd": ["sh"], "User": user})
    with pytest.raises(UsageError, match="not a valid user or group id"):
        build(root, user=huge)
    (root / "etc" / "passwd").write_text(
        f"sup:x:²:0::/:/bin/sh\nlong:x:{huge}:0::/:/bin/sh\nbig:x:4294967296:0::/:/bin/sh\n"
        "odd:x:7:³::/odd:/bin/sh\n"
    )
    (root / "etc" / "group").write_text(f"sup:x:²:\nlong:x:{huge}:\n")
    for user in ("sup", "long", "big", "0:sup", "0:long"):
        with pytest.raises(IntegrityError, match=r"no (user|group)"):
            build(root, {"Cmd": ["sh"], "User": user})
    spec = build(root, user="odd")
    assert (spec.uid, spec.gid, dict(spec.env)["HOME"]) == (7, 7, "/odd")


def test_passwd_symlinked_out_of_the_root_is_read_inside(root: Path, tmp_path: Path) -> None:
    """An image whose /etc/passwd points at a host file: the host file is never read."""
    host_file = tmp_path / "host-passwd"
    host_file.write_text("ghost:x:7:7::/:/bin/sh\n")
    (root / "etc" / "passwd").unlink()
    (root / "etc" / "passwd").symlink_to(f"../../../../../../..{host_file}")
    with pytest.raises(UsageError, match="no user 'ghost'"):
        build(root, user="ghost")


# --- mounts ---------------------------------------------------------------------------------------


def test_volume_parsing(tmp_path: Path) -> None:
    assert runspec.parse_volume(f"{tmp_path}") == Mount(str(tmp_path), str(tmp_path))
    assert runspec.parse_volume(f"{tmp_path}:/d:ro") == Mount(str(tmp_path), "/d", True)
    assert runspec.parse_volume(f"{tmp_path}:/d/../e:rw") == Mount(str(tmp_path), "/e", False)
    for bad in (f"{tmp_path}:rel", f"{tmp_path}/nope:/d", f"{tmp_path}:/a:/b:ro", ":/d"):
        with pytest.raises(UsageError):
            runspec.parse_volume(bad)


def test_mount_targets_resolve_inside_the_root(root: Path, tmp_path: Path) -> None:
    (root / "etc" / "escape").symlink_to("/../../../../tmp/host-target")
    spec = build(root, volumes=(f"{tmp_path}:/lib/modules", f"{tmp_path}:/etc/escape"))
    targets = {m.target for m in spec.mounts}
    assert targets == {"/usr/lib/modules", "/tmp/host-target"}
    assert not (root / "usr" / "lib" / "modules").exists()  # nothing made in the image


def test_later_mounts_win_and_parents_come_first(root: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    spec = build(root, volumes=(f"{a}:/x/y", f"{a}:/x", f"{b}:/x/y"))
    assert [(m.source, m.target) for m in spec.mounts] == [(str(a), "/x"), (str(b), "/x/y")]


def test_mounting_over_the_root_is_refused(root: Path, tmp_path: Path) -> None:
    (root / "up").symlink_to("..")
    for target in ("/", "/up", "/tmp/.."):
        with pytest.raises(UsageError, match="root directory"):
            build(root, volumes=(f"{tmp_path}:{target}",))


def test_sysdirs_novol_and_bindhome(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    targets = {m.target for m in build(root, sysdirs=True).mounts}
    assert {"/dev", "/proc", "/sys"} <= targets
    targets = {m.target for m in build(root, sysdirs=True, novol=("/proc",)).mounts}
    assert "/proc" not in targets
    monkeypatch.setenv("HOME", str(root.parent))
    assert str(root.parent) in {m.target for m in build(root, bindhome=True).mounts}


# --- working directory ----------------------------------------------------------------------------


def test_workdir_is_made_inside_the_root(root: Path) -> None:
    assert build(root, {"Cmd": ["sh"], "WorkingDir": "/srv/app"}).cwd == "/srv/app"
    assert (root / "srv" / "app").is_dir()
    assert build(root, workdir="/lib/x").cwd == "/usr/lib/x"
    assert (root / "usr" / "lib" / "x").is_dir()


@pytest.mark.parametrize("workdir", ["/proc/self/fd/3", "/sys/kernel", "/dev/fd/5", "/jump"])
def test_workdir_in_pseudo_filesystems_is_refused(root: Path, workdir: str) -> None:
    (root / "jump").symlink_to("/proc/self/cwd")
    with pytest.raises(IntegrityError, match="/proc"):
        build(root, {"Cmd": ["sh"], "WorkingDir": workdir})
    with pytest.raises(UsageError, match="/proc"):
        build(root, workdir=workdir)
    assert not (root / "proc" / "self").exists()


def test_workdir_through_a_missing_directory_and_dotdot(root: Path) -> None:
    """``missing/..`` cancels out, as Docker resolves a WorkingDir: a link to
    ``missing/../tmp`` is ``/tmp``, which exists and is not made again."""
    (root / "w").symlink_to("missing/../tmp")
    (root / "deep").symlink_to("/missing/more/../../tmp/app")
    assert inroot.resolve(root, "/w") == inroot.Walk("/tmp", 0, stat.S_IFDIR)
    assert inroot.resolve(root, "/deep/x") == inroot.Walk("/tmp/app/x", 2, None)
    assert build(root, {"Cmd": ["sh"], "WorkingDir": "/w"}).cwd == "/tmp"
    assert build(root, workdir="/deep/x").cwd == "/tmp/app/x"
    assert (root / "tmp" / "app" / "x").is_dir()
    assert not (root / "missing").exists()


def test_workdir_in_a_volume_is_not_made_in_the_root(root: Path, tmp_path: Path) -> None:
    spec = build(root, workdir="/work/sub", volumes=(f"{tmp_path}:/work",))
    assert spec.cwd == "/work/sub"
    assert not (root / "work").exists()


def test_relative_workdir_from_the_command_line_is_refused(root: Path) -> None:
    with pytest.raises(UsageError, match="absolute"):
        build(root, workdir="tmp")


# --- CPUs -----------------------------------------------------------------------------------------


def test_cpuset() -> None:
    assert runspec.parse_cpuset("0-2,5") == {0, 1, 2, 5}
    for bad in ("", "a", "3-1", "-1", "0-", "1,", "\uff10", "1-\uff12", "+1"):
        with pytest.raises(UsageError):
            runspec.parse_cpuset(bad)
    allowed = min(os.sched_getaffinity(0))
    assert runspec.check_cpuset(str(allowed)) == str(allowed)
    with pytest.raises(UsageError, match="not available"):
        runspec.check_cpuset("4095")


# --- host accounts --------------------------------------------------------------------------------


def test_with_user_puts_the_invoking_user_first_for_its_uid() -> None:
    text = "root:x:0:0::/root:/bin/sh\nubuntu:x:1000:1000::/home/ubuntu:/bin/sh\n"
    out = hostauth.with_user(text, "alice:x:1000:1000::/home/alice:/bin/sh")
    assert out.splitlines() == [
        "root:x:0:0::/root:/bin/sh",
        "alice:x:1000:1000::/home/alice:/bin/sh",
        "ubuntu:x:1000:1000::/home/ubuntu:/bin/sh",
    ]
    assert hostauth.with_user(text, "root:x:0:0::/root:/bin/sh") == text  # known: unchanged
    renamed = hostauth.with_user("alice:x:5:5::/:/bin/sh\n", "alice:x:7:7::/:/bin/sh")
    assert renamed == "alice:x:7:7::/:/bin/sh\n"


def test_with_group_adds_a_missing_gid_only() -> None:
    assert hostauth.with_group("root:x:0:\n", "users:x:100:") == "root:x:0:\nusers:x:100:\n"
    assert hostauth.with_group("staff:x:100:\n", "users:x:100:") == "staff:x:100:\n"


def test_host_accounts_are_private_copies(root: Path, tmp_path: Path) -> None:
    """The copies live outside the root and are bound over the image's files, which stay as
    they were, even when they are links to host files."""
    host_file = tmp_path / "host-passwd"
    host_file.write_text("untouched\n")
    (root / "etc" / "passwd").unlink()
    (root / "etc" / "passwd").symlink_to(str(host_file))
    state = tmp_path / "state"
    accounts = hostauth.host_accounts(root, state)
    assert host_file.read_text() == "untouched\n"
    me = pwd.getpwuid(os.getuid()).pw_name
    assert any(line.startswith(f"{me}:") for line in accounts.passwd.splitlines())
    for mount in accounts.mounts:
        assert Path(mount.source).parent == state
        assert mount.target in ("/etc/passwd", "/etc/group")
    spec = build(root, hostauth=True, user=str(os.getuid()))
    assert spec.uid == os.getuid()
    # bound where the image's link leads, inside the root: never over the host file
    assert str(host_file) in {m.target for m in spec.mounts}
    assert host_file.read_text() == "untouched\n"


@pytest.mark.parametrize("kind", ["proc", "dir", "loop"])
def test_host_accounts_are_not_bound_where_they_cannot_be(root: Path, kind: str) -> None:
    """An image whose /etc/passwd leads under /proc (a link to /proc/self/environ), is a
    directory, or is a loop of links: a file cannot be bound there (runc and crun fail to
    start, in two lines), so the container keeps its own, and its /etc/group copy still is."""
    passwd = root / "etc" / "passwd"
    passwd.unlink()
    if kind == "proc":
        passwd.symlink_to("/proc/self/environ")
    elif kind == "dir":
        passwd.mkdir()
    else:
        passwd.symlink_to("../../../etc/passwd")
    spec = build(root, hostauth=True)
    # root is in the image's /etc/group already; another user's group is added
    assert [m.target for m in spec.mounts] == ([] if os.getgid() == 0 else ["/etc/group"])
    me = pwd.getpwuid(os.getuid()).pw_name
    with pytest.raises(UsageError, match="no user"):
        build(root, hostauth=True, user=me)


def test_mounts_under_proc_are_refused(root: Path, tmp_path: Path) -> None:
    """/proc shows the host's processes: runc refuses a bind there and crun fails in two
    lines; an image link can aim a volume there too."""
    (root / "data").symlink_to("/proc/self/root")
    for target in ("/proc/x", "/proc"):
        with pytest.raises(UsageError, match="under /proc"):
            build(root, volumes=(f"{tmp_path}:{target}",))
    for target in ("/data", "/data/etc"):  # the image's link took the volume there
        with pytest.raises(IntegrityError, match=f"the image's {target} is a symbolic link"):
            build(root, volumes=(f"{tmp_path}:{target}",))
    assert "/proc" in {m.target for m in build(root, sysdirs=True).mounts}


# --- paths inside the root ------------------------------------------------------------------------


def test_inroot_resolution(root: Path, tmp_path: Path) -> None:
    (root / "loop").symlink_to("loop")
    (root / "etc" / "up").symlink_to("../../../..")
    assert inroot.resolve(root, "/lib/x/y") == inroot.Walk("/usr/lib/x/y", 2, None)
    assert inroot.resolve(root, "/etc/up/etc/passwd").path == "/etc/passwd"
    assert inroot.resolve(root, "/etc/passwd/x").missing == 1
    with pytest.raises(OSError, match="symbolic links"):
        inroot.resolve(root, "/loop")
    os.mkfifo(root / "etc" / "fifo")
    assert inroot.read_file(root, "/etc/fifo", 100) is None  # never blocks on a FIFO
    assert inroot.read_file(root, "/etc/passwd", 4) == b"root"


def test_account_files_that_are_not_regular_files_are_never_opened(root: Path) -> None:
    """Opening a FIFO releases whatever waits to write to it, and opening a device node (which
    a privileged unpack makes) can act on hardware: a watchdog starts, a tape rewinds."""
    passwd = root / "etc" / "passwd"
    passwd.unlink()
    os.mkfifo(passwd)
    waiting, released = threading.Event(), threading.Event()

    def writer() -> None:
        waiting.set()
        with open(passwd, "wb"):  # blocks until the FIFO is opened for reading
            released.set()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    waiting.wait(5)
    time.sleep(0.2)  # into the blocking open
    assert inroot.read_file(root, "/etc/passwd", 100) is None
    assert hostauth.container_accounts(root).passwd == ""
    assert build(root, hostauth=True).uid is None
    assert not released.wait(0.2), "the FIFO was opened"
    os.close(os.open(passwd, os.O_RDONLY | os.O_NONBLOCK))
    thread.join(5)
