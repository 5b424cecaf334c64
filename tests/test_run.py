"""``ucore run`` as a command (what does not depend on the engine), ``setup`` and ``info``:
images pulled and containers made as needed, ``--pull`` policies, ``--rm``, ``--name``,
``--location``, the engine choice and its aliases. The engine is whichever ucore chooses.

What each engine must do inside the container is in ``test_conformance.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from support.cli import Ucore, assert_error_line, describe
from support.faultproxy import FaultProxy


def ps(cli: Ucore) -> list[dict[str, object]]:
    rows = json.loads(cli.ok("ps", "--json").stdout)
    assert isinstance(rows, list)
    return rows


def manifest_gets(proxy: FaultProxy) -> int:
    return len(proxy.requests("GET", r"/manifests/"))


def test_run_image_pulls_creates_and_records_the_engine(
    ucore_cli: Ucore, proxy: FaultProxy
) -> None:
    image = f"{proxy.address}/busybox:latest"
    assert ucore_cli.ok("run", image, "echo", "hi").stdout == "hi\n"
    [row] = ps(ucore_cli)
    info = json.loads(ucore_cli.ok("info", "--json").stdout)
    usable = [e["name"] for e in info["engines"] if e["usable"]]
    assert row["engine"] == usable[0]  # the first usable engine, recorded
    assert ucore_cli.ok("setup", str(row["id"])).stdout.strip() == usable[0]


def test_rm_removes_the_container_even_when_the_command_fails(
    ucore_cli: Ucore, proxy: FaultProxy
) -> None:
    image = f"{proxy.address}/busybox:latest"
    assert ucore_cli.run("run", "--rm", image, "sh", "-c", "exit 3").returncode == 3
    ucore_cli.fails(127, "run", "--rm", image, "no-such-command")
    assert ps(ucore_cli) == []


def test_rm_refuses_a_container_a_run_is_using(ucore_cli: Ucore, proxy: FaultProxy) -> None:
    """As Docker refuses to remove a running container: rm would delete files from under the
    command (its results among them). ``--rm`` of another run of it keeps it, with a warning,
    and the last run's ``--rm`` removes it."""
    ucore_cli.ok("create", "--name", "busy", f"{proxy.address}/busybox:latest")
    proc = subprocess.Popen(
        ucore_cli.argv("run", "busy", "sh", "-c", "echo ready; read x; echo result > /out"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=ucore_cli.env,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        err = assert_error_line(ucore_cli.fails(2, "rm", "-f", "busy"))
        assert "in use" in err
        other = ucore_cli.run("run", "--rm", "busy", "true")
        assert other.returncode == 0, describe(other)
        assert "in use" in other.stderr and "kept" in other.stderr
        assert [r["names"] for r in ps(ucore_cli)] == [["busy"]]
    finally:
        proc.communicate(input="go\n", timeout=60)
    assert proc.returncode == 0
    assert ucore_cli.ok("run", "--rm", "busy", "cat", "/out").stdout == "result\n"
    assert ps(ucore_cli) == []


def test_pull_policies(ucore_cli: Ucore, proxy: FaultProxy) -> None:
    image = f"{proxy.address}/busybox:latest"
    result = ucore_cli.fails(3, "run", "--rm", "--pull=never", image, "true")
    assert "never" in result.stderr
    assert manifest_gets(proxy) == 0
    ucore_cli.ok("run", "--rm", image, "true")  # missing: pulled
    pulled = manifest_gets(proxy)
    assert pulled > 0
    ucore_cli.ok("run", "--rm", image, "true")  # present: not asked again
    ucore_cli.ok("run", "--rm", "--pull=never", image, "true")
    assert manifest_gets(proxy) == pulled
    ucore_cli.ok("run", "--rm", "--pull=always", image, "true")
    assert manifest_gets(proxy) > pulled


def test_pull_reuse_runs_the_named_container(ucore_cli: Ucore, proxy: FaultProxy) -> None:
    image = f"{proxy.address}/busybox:latest"
    ucore_cli.ok("run", "--name", "job", "--pull=reuse", image, "sh", "-c", "echo 1 > /kept")
    out = ucore_cli.ok("run", "--name", "job", "--pull=reuse", image, "cat", "/kept").stdout
    assert out == "1\n"
    assert len(ps(ucore_cli)) == 1
    ucore_cli.fails(2, "run", "--name", "job", image, "true")  # the name is taken


def test_pull_reuse_waits_for_the_job_creating_the_container(
    ucore_cli: Ucore, proxy: FaultProxy
) -> None:
    """The jobs of an array start together with ``--pull=reuse --name``: those that find the
    name reserved by a creator still at work wait, then run, instead of failing. Here the
    creator is a process that reserves the name and dies without creating: the waiting job
    takes the name over when it is gone and creates the container itself."""
    image = f"{proxy.address}/busybox:latest"
    ucore_cli.ok("pull", image)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from ucore.storage.containers import reserve_name\n"
            "from pathlib import Path\n"
            "from ucore.storage.store import Store\n"
            "reserve_name(Store(Path(sys.argv[1])).ensure(), 'job', '0' * 32)\n"
            "print('reserved', flush=True)\n"
            "time.sleep(2)\n",
            str(ucore_cli.store),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    # reaped as soon as it ends: a zombie's pid still looks alive
    threading.Thread(target=holder.wait, daemon=True).start()
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "reserved\n"
        result = ucore_cli.ok("--verbose", "run", "--name", "job", "--pull=reuse", image, "true")
        assert holder.poll() is not None, "the run did not wait for the holder"
        assert "being created by pid" in result.stderr  # info: shown with -v
    finally:
        holder.kill()
        holder.wait()
    assert [row["names"] for row in ps(ucore_cli)] == [["job"]]
    jobs = [
        ucore_cli.popen("run", "--name", "many", "--pull=reuse", image, "true") for _ in range(4)
    ]
    results = [(job.wait(timeout=120), job.communicate()) for job in jobs]
    assert [code for code, _ in results] == [0] * 4, results
    assert len(ps(ucore_cli)) == 2
    # a batch job's log holds only its tasks' output: waiting is normal, not worth a line
    assert [err for _, (_, err) in results] == [""] * 4


@pytest.mark.parametrize("name", ["../x", "bad name", "0123456789abcdef0123456789abcdef", "-x"])
def test_a_bad_name_is_refused_before_pulling(
    ucore_cli: Ucore, proxy: FaultProxy, name: str
) -> None:
    image = f"{proxy.address}/busybox:latest"
    assert "invalid container name" in assert_error_line(
        ucore_cli.fails(2, "run", f"--name={name}", image, "true")
    )
    assert manifest_gets(proxy) == 0
    assert json.loads(ucore_cli.ok("images", "--json").stdout) == []


def test_run_by_name_and_by_id(ucore_cli: Ucore, proxy: FaultProxy) -> None:
    cid = ucore_cli.ok("create", "--name", "named", f"{proxy.address}/busybox:latest")
    cid_text = cid.stdout.strip()
    assert ucore_cli.ok("run", "named", "echo", "by-name").stdout == "by-name\n"
    assert ucore_cli.ok("run", cid_text[:8], "echo", "by-id").stdout == "by-id\n"


def test_location_runs_a_root_directory(
    ucore_cli: Ucore, proxy: FaultProxy, tmp_path: Path
) -> None:
    ucore_cli.ok("create", "--name", "src", f"{proxy.address}/busybox:latest")
    root = Path(ucore_cli.ok("inspect", "-p", "src").stdout.strip())
    copy = tmp_path / "rootfs"
    shutil.copytree(root, copy, symlinks=True)
    out = ucore_cli.ok("run", "--location", str(copy), "cat", "/etc/hostname").stdout
    assert out == "busybox\n"
    ucore_cli.ok("run", "--location", str(copy), "sh", "-c", "echo here > /tmp/loc")
    assert (copy / "tmp" / "loc").read_text() == "here\n"
    assert len(ps(ucore_cli)) == 1  # no container was made for it
    ucore_cli.fails(2, "run", "--location", str(tmp_path / "missing"), "true")


def test_location_that_cannot_be_opened_is_one_line(ucore_cli: Ucore, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    err = assert_error_line(ucore_cli.fails(2, "run", "--location", str(tmp_path / "file"), "true"))
    assert "not a directory" in err.lower()
    if os.geteuid() == 0:
        return  # root opens what it likes
    locked = tmp_path / "locked"
    (locked / "root").mkdir(parents=True)
    locked.chmod(0)
    try:
        for path in (locked, locked / "root"):
            result = ucore_cli.fails(2, "run", "--location", str(path), "true")
            assert "permission denied" in assert_error_line(result).lower()
    finally:
        locked.chmod(0o700)


def test_unknown_target_is_one_clear_line(ucore_cli: Ucore) -> None:
    result = ucore_cli.fails(3, "run", "--pull=never", "No_Such_Thing", "true")
    assert "No_Such_Thing" in assert_error_line(result)


def test_bad_options_are_usage_errors(ucore_cli: Ucore, proxy: FaultProxy, tmp_path: Path) -> None:
    image = f"{proxy.address}/busybox:latest"
    ucore_cli.ok("create", "--name", "c", image)
    ucore_cli.fails(2, "run", "-v", f"{tmp_path}/missing:/x", "c", "true")
    ucore_cli.fails(2, "run", "-v", f"{tmp_path}:relative", "c", "true")
    ucore_cli.fails(2, "run", "-v", f"{tmp_path}:/", "c", "true")
    ucore_cli.fails(2, "run", "-w", "relative", "c", "true")
    ucore_cli.fails(2, "run", "--cpuset-cpus", "99999", "c", "true")
    ucore_cli.fails(2, "run", "-e", "=x", "c", "true")
    ucore_cli.fails(2, "run", "--entrypoint", "", "c")  # nothing left to run


def test_docker_flags_udocker_ignores_are_accepted_and_explained(
    ucore_cli: Ucore, proxy: FaultProxy
) -> None:
    image = f"{proxy.address}/busybox:latest"
    ucore_cli.ok("create", "--name", "c", image)
    result = ucore_cli.ok("run", "-it", "--dns", "1.1.1.1", "c", "echo", "ok")
    assert result.stdout == "ok\n"
    verbose = ucore_cli.ok("-v", "run", "-i", "--dns", "1.1.1.1", "c", "true")
    assert "-i is accepted and ignored" in verbose.stderr
    assert "--dns is accepted and ignored" in verbose.stderr


def test_bindhome(ucore_cli: Ucore, proxy: FaultProxy) -> None:
    (ucore_cli.home / "in-home").write_text("mine\n")
    image = f"{proxy.address}/busybox:latest"
    ucore_cli.ok("create", "--name", "c", image)
    out = ucore_cli.ok("run", "--bindhome", "c", "cat", f"{ucore_cli.home}/in-home").stdout
    assert out == "mine\n"


# --- setup and info -----------------------------------------------------------------------------


def test_setup_takes_engine_names_and_udocker_modes(ucore_cli: Ucore, proxy: FaultProxy) -> None:
    ucore_cli.ok("create", "--name", "c", f"{proxy.address}/busybox:latest")
    ucore_cli.ok("setup", "--execmode=P2", "c")
    assert ps(ucore_cli)[0]["engine"] == "proot-noseccomp"
    ucore_cli.ok("setup", "--engine", "proot", "c")
    assert ps(ucore_cli)[0]["engine"] == "proot"
    ucore_cli.ok("setup", "--engine", "auto", "c")
    assert ps(ucore_cli)[0]["engine"] is None
    ucore_cli.fails(2, "setup", "--engine", "no-such-engine", "c")


def test_setup_purge_removes_what_runs_made(ucore_cli: Ucore, proxy: FaultProxy) -> None:
    """Runs leave the account and name-resolution copies in the container directory (outside
    its root); ``setup --purge`` removes them, and the next run makes them again."""
    ucore_cli.ok("create", "--name", "c", f"{proxy.address}/busybox:latest")
    ucore_cli.ok("run", "-u", str(os.getuid() + 4242), "c", "true")
    made = Path(ucore_cli.ok("inspect", "-p", "c").stdout.strip()).parent
    assert (made / "hostfiles" / "resolv.conf").read_bytes() == Path(
        "/etc/resolv.conf"
    ).read_bytes()
    ucore_cli.ok("setup", "--purge", "c")
    assert not (made / "hostfiles").exists() and not (made / "hostauth").exists()
    ucore_cli.ok("run", "c", "true")
    assert (made / "hostfiles" / "resolv.conf").exists()


def test_an_engine_probe_on_a_full_disk_is_the_disks_error(
    ucore_cli: Ucore, proxy: FaultProxy, tmp_path: Path
) -> None:
    """PRoot's probe writes a scratch file in the store; on a full disk that is exit 7 (the
    disk), not exit 8 (no usable engine), and the probe runs again once there is room."""
    ucore_cli.ok("create", "--name", "c", f"{proxy.address}/busybox:latest")
    ucore_cli.ok("setup", "--engine", "proot", "c")
    ucore_cli.ok("run", "c", "true")  # the copies a run keeps are written
    (ucore_cli.store / "cache" / "proot.json").unlink()
    mount = tmp_path / "mnt"
    mount.mkdir()
    result = ucore_cli.on_full_disk(0, mount, "run", "c", "true")
    assert result.returncode == 7, describe(result)
    assert "disk full" in assert_error_line(result)
    ucore_cli.ok("run", "c", "true")


def test_s1_is_the_singularity_engine(ucore_cli: Ucore, proxy: FaultProxy) -> None:
    """S1 (udocker's Singularity mode) is ucore-singularity's engine: ``setup --execmode=S1``
    records it where a usable Apptainer or Singularity is found, and otherwise fails as any
    engine that cannot run here does (status 8), with the probe's reason."""
    info = json.loads(ucore_cli.ok("info", "--json").stdout)
    engines = {e["name"]: e for e in info["engines"]}
    assert "S1" in engines["singularity"]["aliases"]
    ucore_cli.ok("create", "--name", "c", f"{proxy.address}/busybox:latest")
    result = ucore_cli.run("setup", "--execmode=S1", "c")
    if engines["singularity"]["usable"]:
        assert result.returncode == 0, describe(result)
    else:
        assert result.returncode == 8, describe(result)
        assert "singularity" in assert_error_line(result)


def test_info_shows_every_engine_and_why(ucore_cli: Ucore) -> None:
    info = json.loads(ucore_cli.ok("info", "--json").stdout)
    engines = {e["name"]: e for e in info["engines"]}
    assert {"proot", "proot-noseccomp"} <= set(engines)
    assert engines["proot"]["aliases"] == ["P1"]
    assert engines["proot-noseccomp"]["aliases"] == ["P2"]
    for engine in engines.values():
        assert engine["usable"] or engine["reason"]
    text = ucore_cli.ok("info").stdout
    assert "proot" in text and "P1" in text


def test_info_says_how_to_get_proot_when_there_is_none(ucore_cli: Ucore, tmp_path: Path) -> None:
    env = {"PATH": str(tmp_path), "UCORE_PROOT": ""}
    info = json.loads(ucore_cli.ok("info", "--json", env=env).stdout)
    proot = next(e for e in info["engines"] if e["name"] == "proot")
    assert not proot["usable"]
    assert "proot-me.github.io" in proot["reason"]


def test_kernel_is_faked_or_refused_clearly(ucore_cli: Ucore, proxy: FaultProxy) -> None:
    ucore_cli.ok("create", "--name", "c", f"{proxy.address}/busybox:latest")
    result = ucore_cli.run("run", "--kernel", "6.0.0", "c", "uname", "-r")
    if result.returncode == 0:
        assert result.stdout == "6.0.0\n"
    else:
        assert result.returncode == 8, describe(result)
        line = assert_error_line(result)
        assert "glibc 2.33" in line or "cannot fake the kernel release" in line


def test_run_needs_a_target(ucore_cli: Ucore) -> None:
    ucore_cli.fails(2, "run")
    assert os.path.isdir(ucore_cli.home)


#: What running an existing container never needs, each costing ``ucore run`` start-up time
#: (bench/run.py measures it): the registry client and its HTTP stack, structured logging,
#: the image values and manifests, hashing, and standard modules with lighter replacements.
NOT_ON_THE_RUN_PATH = (
    "requests",
    "urllib3",
    "structlog",
    "attr",
    "dataclasses",
    "ucore.values.oci",
    "ucore.values.events",
    "ucore.storage.manifest",
    "ucore.storage.images",
    "ucore.storage.extract",
    "ucore.builtin.registry.client",
    "hashlib",
    "shutil",
    "configparser",
    "uuid",
    "socket",
    "platform",
    "tempfile",
)


def test_run_start_up_imports_only_what_running_needs(
    ucore_cli: Ucore, proxy: FaultProxy, tmp_path: Path
) -> None:
    """A structural guard on start-up time (never a timed assertion): after ``ucore run`` of
    an existing container, none of :data:`NOT_ON_THE_RUN_PATH` has been imported. The first
    run of a store is left out: it probes the engine once (temporary files) and caches that."""
    ucore_cli.ok("create", "--name", "lean", f"{proxy.address}/busybox:latest")
    ucore_cli.ok("run", "lean", "true")
    report = tmp_path / "modules.json"
    script = (
        "import json, sys\n"
        "from ucore.cli import main\n"
        "status = main(sys.argv[1:])\n"
        f"open({str(report)!r}, 'w').write(json.dumps(sorted(sys.modules)))\n"
        "sys.exit(status)\n"
    )
    argv = [sys.executable, "-c", script, "run", "lean", "sh", "-c", "exit 7"]
    result = subprocess.run(argv, env=ucore_cli.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 7, result.stderr
    loaded = set(json.loads(report.read_text()))
    assert "ucore.running.runspec" in loaded  # the report is of a real run
    assert sorted(loaded.intersection(NOT_ON_THE_RUN_PATH)) == []


@pytest.mark.slow
def test_a_job_array_of_64_tasks_pulls_and_creates_once(
    ucore_cli: Ucore, proxy: FaultProxy
) -> None:
    """The job-array pattern at scale: 64 tasks start ``run --pull=reuse --name`` on one
    store at once, with nothing pulled yet. All succeed, the image is fetched once (its
    blobs, whatever the manifest requests), one container is made, and verify passes."""
    image = f"{proxy.address}/busybox:latest"
    tasks = [
        ucore_cli.popen("run", "--pull=reuse", "--name", "array", image, "sh", "-c", f"echo {i}")
        for i in range(64)
    ]
    results = [(task.wait(timeout=600), *task.communicate()) for task in tasks]
    assert [(code, out) for code, out, _ in results] == [(0, f"{i}\n") for i in range(64)]
    assert [err for _, _, err in results] == [""] * 64
    assert [row["names"] for row in ps(ucore_cli)] == [["array"]]
    layers = proxy.requests("GET", r"/blobs/")
    assert len(layers) == len({r.path for r in layers}), "a blob was fetched twice"
    ucore_cli.ok("verify", image)
