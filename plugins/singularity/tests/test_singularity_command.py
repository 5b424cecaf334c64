"""How the singularity engine finds its runtime and spells a run, without a runtime: the
conformance class (``test_singularity_conformance.py``) runs the real thing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from ucore.values.errors import UsageError
from ucore.values.model import Container, DeviceNode, Mount, RunSpec
from ucore_singularity import discover, engine
from ucore_singularity.discover import Runtime
from ucore_singularity.engine import SingularityEngine

APPTAINER = Runtime("/usr/bin/apptainer", "apptainer", "1.4.5", False, True, "")


def _engine(settings: dict[str, str]) -> SingularityEngine:
    """An engine without a session: ``command`` reads only its settings."""
    made = SingularityEngine.__new__(SingularityEngine)
    made.settings = settings
    return made


def _container(tmp_path: Path) -> Container:
    (tmp_path / "ROOT" / "etc").mkdir(parents=True)
    return Container(id="c", dir=tmp_path, image="busybox")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("apptainer version 1.4.5\n", ("apptainer", "1.4.5")),
        ("singularity-ce version 4.1.0-jammy\n", ("singularity", "4.1.0-jammy")),
        ("singularity version 3.8.7-1.el7\n", ("singularity", "3.8.7-1.el7")),
    ],
)
def test_flavour_and_version(text: str, expected: tuple[str, str]) -> None:
    assert discover.parse_version(text) == expected


def test_too_old_versions_are_refused_with_the_reason() -> None:
    assert discover.too_old("apptainer", "1.4.5") is None
    assert discover.too_old("singularity", "4.1.0") is None
    assert "too old" in str(discover.too_old("singularity", "3.8.7"))
    assert "too old" in str(discover.too_old("apptainer", "0.9"))


def test_a_configuration_that_forbids_sandboxes_or_binds(tmp_path: Path) -> None:
    conf = tmp_path / "apptainer.conf"
    conf.write_text("# allow container dir = yes\nallow container dir = no\nuser bind control=no\n")
    config = discover.read_config(conf)
    assert "sandboxes" in str(discover.forbidden(config, root=False))
    conf.write_text("allow container dir = yes\nuser bind control = no\n\x00garbage = =\n")
    assert "user binds" in str(discover.forbidden(discover.read_config(conf), root=False))
    assert discover.forbidden(discover.read_config(conf), root=True) is None
    assert discover.read_config(tmp_path / "missing") == {}


def test_locate_order(tmp_path: Path) -> None:
    program = tmp_path / "apptainer"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    assert discover.locate({"PATH": str(tmp_path)}, None) == (str(program), "found on PATH")
    path, why = discover.locate({"UCORE_SINGULARITY": "/nonexistent", "PATH": ""}, None)
    assert path is None and "UCORE_SINGULARITY" in why
    path, why = discover.locate({"PATH": "/nonexistent"}, None)
    assert path is None and "no apptainer or singularity" in why


@pytest.mark.skipif(os.geteuid() == 0, reason="root runs without --fakeroot")
def test_root_inside_is_fakeroot_and_binds_keep_their_flags(tmp_path: Path) -> None:
    container = _container(tmp_path)
    spec = RunSpec(
        argv=("sh", "-c", "true"),
        env=(("PATH", "/bin"), ("HOME", "/root"), ("A", "x y")),
        cwd="/work",
        mounts=(Mount("/host/ro", "/ro", readonly=True), Mount("/host/rw", "/rw")),
        devices=(DeviceNode("/dev/nvidia0"),),
    )
    argv = _engine({}).command(APPTAINER, container, spec, str(container.root))
    assert argv[:3] == ["/usr/bin/apptainer", "--silent", "exec"]
    assert "--cleanenv" in argv and "--fakeroot" in argv
    binds = {"/host/ro:/ro:ro", "/host/rw:/rw", "/dev/nvidia0:/dev/nvidia0"}
    assert _pairs(argv, "--bind") >= binds
    assert argv[argv.index("--home") + 1] == "/root"
    assert argv[-5:] == ["/work", str(container.root), "sh", "-c", "true"]
    env = _engine({}).environment(APPTAINER, spec)
    assert env["APPTAINERENV_A"] == "x y" and env["APPTAINERENV_PATH"] == "/bin"
    assert "APPTAINERENV_HOME" not in env
    assert not {k for k in env if not k.startswith("APPTAINER")} - {"PATH"}


def test_singularity_uses_its_own_prefix() -> None:
    singularity = APPTAINER._replace(flavour="singularity")
    env = _engine({}).environment(singularity, RunSpec(argv=("true",), env=(("X", "1"),)))
    assert env["SINGULARITYENV_X"] == "1"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may run as any user")
def test_another_user_is_refused_in_one_line(tmp_path: Path) -> None:
    container = _container(tmp_path)
    spec = RunSpec(argv=("id",), uid=1234, gid=5)
    with pytest.raises(UsageError, match="invoking user or as root"):
        _engine({}).command(APPTAINER, container, spec, str(container.root))
    mine = spec._replace(uid=os.getuid(), gid=os.getgid())
    assert "--userns" in _engine({}).command(APPTAINER, container, mine, str(container.root))


def test_the_runtimes_gpu_option_on_request(tmp_path: Path, monkeypatch: Any) -> None:
    container = _container(tmp_path)
    spec = RunSpec(argv=("true",), uid=os.getuid(), gid=os.getgid())
    assert "--nv" in _engine({"gpu": "nv"}).command(APPTAINER, container, spec, "/x")
    monkeypatch.setenv("UCORE_SINGULARITY_GPU", "rocm")
    assert "--rocm" in _engine({}).command(APPTAINER, container, spec, "/x")


def test_paths_the_bind_syntax_cannot_carry_are_refused() -> None:
    with pytest.raises(UsageError, match="':' or ','"):
        engine._bind("/a:b", "/c", False)


def test_missing_capabilities_are_named() -> None:
    assert all(cap.startswith("CAP_") for cap in engine.missing_capabilities())


def _pairs(argv: list[str], option: str) -> set[str]:
    return {argv[i + 1] for i, word in enumerate(argv) if word == option}
