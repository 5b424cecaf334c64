"""The Python API (:mod:`ucore.api`) alone: pull, create, run, events, errors, removal.

Nothing here goes through the ``ucore`` command: a workflow manager or a notebook would use
exactly these calls. The images come from the local registry the harness starts.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ucore.api import RunResult, Ucore
from ucore.testing.registry import RegistryServer
from ucore.values.errors import NotFoundError, UcoreError, UsageError
from ucore.values.events import Event


@pytest.fixture
def api(tmp_path: Path) -> Ucore:
    """A private store and home, no proxy, the events recorded in ``api.seen``."""
    seen: list[Event] = []
    handle = Ucore(
        tmp_path / "store",
        environ={"HOME": str(tmp_path), "PATH": os.environ.get("PATH", os.defpath)},
        on_event=seen.append,
    )
    handle.seen = seen  # type: ignore[attr-defined]
    return handle


def test_pull_create_run_remove(api: Ucore, registry: RegistryServer, busybox_image: str) -> None:
    image = api.pull(busybox_image)
    assert str(image.ref) == busybox_image
    names = [e.name for e in api.seen]  # type: ignore[attr-defined]
    assert {"stage.start", "stage.finish", "blob.download.start"} <= set(names)
    assert [str(i.ref) for i in api.images()] == [busybox_image]

    container = api.create(busybox_image, name="job")
    assert [c.id for c in api.containers()] == [container.id]
    assert api.container("job").id == container.id

    result = api.run(
        "job",
        ["sh", "-c", 'echo "$GREETING from $(pwd)"; cat; echo oops >&2; exit 3'],
        env={"GREETING": "hello"},
        workdir="/tmp",
        capture=True,
        input=b"from stdin\n",
    )
    assert result == RunResult(3, "hello from /tmp\nfrom stdin\n", "oops\n")
    assert api.run("job", ["true"]) == RunResult(0)

    api.remove("job")
    assert api.containers() == []
    api.remove_image(busybox_image)
    assert api.images() == []


def test_run_of_an_image_creates_a_container_and_removes_it(
    api: Ucore, registry: RegistryServer, busybox_image: str
) -> None:
    result = api.run(busybox_image, ["echo", "made"], capture=True, remove=True)
    assert (result.status, result.stdout) == (0, "made\n")
    assert api.containers() == []
    assert [str(i.ref) for i in api.images()] == [busybox_image]  # pulled on the way


def test_errors_are_the_clis_as_typed_exceptions(
    api: Ucore, registry: RegistryServer, busybox_image: str
) -> None:
    with pytest.raises(UsageError, match="invalid reference") as bad:
        api.pull("Not/A Valid:ref")
    assert bad.value.exit_code == 2
    with pytest.raises(NotFoundError) as missing:
        api.pull(f"{registry.address}/no-such-image:latest")
    assert missing.value.exit_code == 3
    with pytest.raises(NotFoundError, match="--pull=never"):
        api.run(busybox_image, ["true"], pull="never")
    with pytest.raises(UsageError, match="pull policy"):
        api.run(busybox_image, ["true"], pull="sometimes")
    with pytest.raises(NotFoundError):
        api.remove("no-such-container")
    assert issubclass(NotFoundError, UcoreError)
    assert api.containers() == [] and api.images() == []


def test_a_run_leaves_the_embedding_programs_own_children_alone(
    api: Ucore, registry: RegistryServer, busybox_image: str
) -> None:
    """Engines end what a command leaves running by becoming the subreaper of the run and
    killing the children that remain. In a program that embeds ucore, children it had before
    (a server, a worker) are not the run's: they survive it, and the program is no subreaper
    afterwards (orphans of its other children go to init as before)."""
    import ctypes
    import subprocess

    with subprocess.Popen(["sleep", "60"]) as own:
        try:
            result = api.run(busybox_image, ["sh", "-c", "sleep 30 & echo started"], capture=True)
            assert (result.status, result.stdout) == (0, "started\n")
            assert own.poll() is None
        finally:
            own.kill()
    flag = ctypes.c_int(-1)
    ctypes.CDLL(None).prctl(37, ctypes.byref(flag), 0, 0, 0)  # PR_GET_CHILD_SUBREAPER
    assert flag.value == 0


def test_pass_env_is_read_from_the_environment_given(
    tmp_path: Path, registry: RegistryServer, busybox_image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch system's variables reach the container unless the settings say otherwise;
    ``UCORE_PASS_ENV=`` (empty) in the environment the embedding program hands to
    :class:`Ucore` turns that off, whatever the program's own environment says."""
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.delenv("UCORE_PASS_ENV", raising=False)
    base = {"HOME": str(tmp_path), "PATH": os.environ.get("PATH", os.defpath)}
    show = ["sh", "-c", "echo ${SLURM_JOB_ID:-none}"]
    default = Ucore(tmp_path / "store", environ=base)
    assert default.run(busybox_image, show, capture=True, remove=True).stdout == "77\n"
    none = Ucore(tmp_path / "store", environ={**base, "UCORE_PASS_ENV": ""})
    assert none.run(busybox_image, show, capture=True, remove=True).stdout == "none\n"
