"""What a containerised rank takes from its launcher: the rendezvous directories its variables
name (and nothing else of /tmp), and the invoking user's identity for a PMIx client. No
launcher runs here: the environments are the ones Open MPI's ``mpirun`` and Slurm's
``srun --mpi=pmix`` were seen to set (``tests/test_mpi.py`` runs the real ones)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import pytest

from ucore.config import Config
from ucore.running import launcher, runspec
from ucore.running.runspec import RunOptions
from ucore.values.errors import UsageError
from ucore.values.model import Container, Mount, RunSpec


class FakeSession:
    """What ``runspec.build`` needs of a session: no plugin adds anything."""

    def prepare(self, container: Container, spec: RunSpec) -> list[dict[str, Any]]:
        return []


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "ROOT"
    for d in ("bin", "etc", "tmp"):
        (r / d).mkdir(parents=True)
    (r / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (r / "bin" / "sh").write_text("#!/bin/sh\n")
    (r / "bin" / "sh").chmod(0o755)
    return r


def build(
    root: Path, environ: dict[str, str], config: Optional[dict[str, Any]] = None, **opts: Any
) -> RunSpec:
    container = Container(id="t", dir=root.parent, image="", location=root)
    return runspec.build(
        FakeSession(),  # type: ignore[arg-type]
        container,
        {"config": config or {"Cmd": ["sh"]}},
        RunOptions(sysdirs=False, hostauth=False, **opts),
        environ=environ,
    )


def mpirun_environ(tmp: Path) -> dict[str, str]:
    """What ``mpirun`` (Open MPI 4.1, PMIx 4.2) sets for a rank, session directory made."""
    session = tmp / "ompi.node.1000" / "pid.77"
    (session / "pmix_dstor_ds21_77").mkdir(parents=True)
    (session / "pmix_dstor_ds12_77").mkdir()
    return {
        "OMPI_MCA_orte_top_session_dir": str(tmp / "ompi.node.1000"),
        "OMPI_MCA_orte_jobfam_session_dir": str(session),
        "OMPI_MCA_orte_tmpdir_base": str(tmp),
        "OMPI_FILE_LOCATION": str(session / "0" / "0"),
        "PMIX_SERVER_TMPDIR": str(session),
        "PMIX_DSTORE_21_BASE_PATH": str(session / "pmix_dstor_ds21_77"),
        "PMIX_DSTORE_ESH_BASE_PATH": str(session / "pmix_dstor_ds12_77"),
        "PMIX_SYSTEM_TMPDIR": str(tmp),
        "PMIX_NAMESPACE": "1841102849",
        "PMIX_RANK": "0",
        "TMPDIR": str(tmp),
    }


def test_mpirun_binds_the_job_familys_session_directory_only(tmp_path: Path) -> None:
    """One bind carries the data store inside it; the per-user top directory, the base of
    every launcher's directories (``PMIX_SYSTEM_TMPDIR``, ``TMPDIR``) and the output files'
    directory that does not exist yet are not bound."""
    environ = mpirun_environ(tmp_path)
    session = str(tmp_path / "ompi.node.1000" / "pid.77")
    assert launcher.rendezvous(environ) == [session]
    assert launcher.mounts(environ) == [Mount(session, session, transient=True)]


def test_srun_pmix_binds_the_plugins_directory_and_a_data_store_elsewhere(tmp_path: Path) -> None:
    """Slurm's PMIx plugin: the server's directory in slurmd's spool (named with a trailing
    slash and a doubled one inside); a data store a server keeps outside it is bound too."""
    server = tmp_path / "spool" / "pmix.1.0"
    server.mkdir(parents=True)
    store = tmp_path / "shm" / "dstore"
    store.mkdir(parents=True)
    environ = {
        "PMIX_SERVER_TMPDIR": f"{server}/",
        "PMIX_DSTORE_21_BASE_PATH": f"{server}//pmix_dstor_ds21_11572",
        "PMIX_DSTORE_ESH_BASE_PATH": str(store),
        "PMIX_SYSTEM_TMPDIR": "/tmp",
    }
    (server / "pmix_dstor_ds21_11572").mkdir()
    assert launcher.rendezvous(environ) == [str(server), str(store)]


def test_an_inner_directory_named_first_gives_way_to_its_outer_one(tmp_path: Path) -> None:
    (tmp_path / "job" / "store").mkdir(parents=True)
    environ = {
        "OMPI_MCA_orte_jobfam_session_dir": str(tmp_path / "job" / "store"),
        "PMIX_SERVER_TMPDIR": str(tmp_path / "job"),
    }
    assert launcher.rendezvous(environ) == [str(tmp_path / "job")]


@pytest.mark.parametrize(
    "value", ["/tmp", "/tmp/", "/", "/dev/shm", "relative/dir", "", "/no/such"]
)
def test_bases_relative_and_missing_paths_are_never_bound(value: str) -> None:
    assert launcher.rendezvous({"PMIX_SERVER_TMPDIR": value}) == []


def test_home_and_tmpdir_are_bases_too(tmp_path: Path) -> None:
    """A launcher whose base is the job's TMPDIR, or a home directory, names it: binding it
    would hand the container what is not the launcher's."""
    environ = {"PMIX_SERVER_TMPDIR": str(tmp_path), "TMPDIR": str(tmp_path)}
    assert launcher.rendezvous(environ) == []
    environ = {"PMIX_SERVER_TMPDIR": str(tmp_path), "HOME": f"{tmp_path}/"}
    assert launcher.rendezvous(environ) == []


def test_a_link_is_bound_where_it_leads(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("real")
    assert launcher.rendezvous({"PMIX_SERVER_TMPDIR": str(tmp_path / "link")}) == [
        str(tmp_path / "real")
    ]


def test_outside_a_launcher_nothing_is_bound_and_the_user_is_the_images(root: Path) -> None:
    spec = build(root, {"TERM": "xterm", "TMPDIR": "/tmp"})
    assert spec.mounts == ()
    assert spec.uid is None


def test_a_pmix_rank_runs_as_the_invoking_user_with_the_session_bound(
    root: Path, tmp_path: Path
) -> None:
    environ = mpirun_environ(tmp_path / "host-tmp")
    spec = build(root, environ, {"Cmd": ["sh"], "User": "0"})
    assert (spec.uid, spec.gid) == (os.getuid(), os.getgid())
    session = environ["OMPI_MCA_orte_jobfam_session_dir"]
    assert [m.target for m in spec.mounts] == [session]
    assert dict(spec.env)["PMIX_RANK"] == "0"  # passed without --hostenv


def test_an_explicit_user_wins_over_the_ranks_default(root: Path, tmp_path: Path) -> None:
    spec = build(root, mpirun_environ(tmp_path), user="0:0")
    assert (spec.uid, spec.gid) == (0, 0)


def test_launcher_binds_off_binds_nothing(root: Path, tmp_path: Path) -> None:
    spec = build(root, mpirun_environ(tmp_path), launcher_binds=False)
    assert spec.mounts == ()


@pytest.mark.unpriv
@pytest.mark.skipif(
    os.geteuid() == 0, reason="root opens a mode-0 directory: the unpriv run shows it"
)
def test_a_mount_point_a_running_proot_holds_is_placed(root: Path, tmp_path: Path) -> None:
    """PRoot makes a missing bind target in the root with mode 0 while it runs; another rank
    of the same container starting meanwhile must still place its bind there."""
    environ = mpirun_environ(tmp_path)
    session = environ["OMPI_MCA_orte_jobfam_session_dir"]
    held = root / session.lstrip("/")
    held.mkdir(parents=True)
    held.chmod(0)
    try:
        spec = build(root, environ)
    finally:
        held.chmod(0o755)
    assert [m.target for m in spec.mounts] == [session]


@pytest.mark.parametrize(("text", "value"), [("no", False), ("0", False), ("Yes", True)])
def test_the_setting_reads_yes_and_no(text: str, value: bool, tmp_path: Path) -> None:
    environ = {"UCORE_DIR": str(tmp_path), "UCORE_LAUNCHER_BINDS": text}
    assert Config.load(environ).launcher_binds is value


def test_the_setting_refuses_anything_else(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="launcher_binds must be yes or no"):
        Config.load({"UCORE_DIR": str(tmp_path), "UCORE_LAUNCHER_BINDS": "maybe"})
