"""Beyond udocker: a container handed to the runtime as a SIF file built from the store, with
no network (``image = sif`` in ``[singularity]``, or ``UCORE_SINGULARITY_IMAGE=sif``), for
sites that forbid sandboxes. Needs a real runtime and ``mksquashfs``: skipped without them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ucore.testing.cli import Ucore, engine_container, installed_engines, usable_engine


def test_a_sif_built_from_the_store_runs_read_only(
    ucore_busybox_image: str, tmp_path: Path
) -> None:
    cli = Ucore(tmp_path / "store")
    usable_engine(installed_engines(cli), "singularity")
    if shutil.which("mksquashfs") is None:
        pytest.skip("no mksquashfs (squashfs-tools): the runtime cannot build a SIF")
    cli.ok("pull", ucore_busybox_image)
    name = engine_container(cli, ucore_busybox_image, "singularity", "sif")
    sif = {"UCORE_SINGULARITY_IMAGE": "sif"}
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "f").write_text("from the host\n")
    volume = f"{tmp_path / 'in'}:/data:ro"
    out = cli.ok("run", "-v", volume, name, "sh", "-c", "cat /data/f; id -u", env=sif).stdout
    assert out == "from the host\n0\n"
    sif_file = Path(cli.ok("inspect", "-p", name).stdout.strip()).parent / "image.sif"
    assert sif_file.is_file()
    built = sif_file.stat().st_mtime_ns
    assert cli.run("run", name, "touch", "/new", env=sif).returncode != 0  # a SIF is read-only
    assert sif_file.stat().st_mtime_ns == built  # built once, reused
