"""Mount points made in a container's root for runtimes that make none themselves."""

from __future__ import annotations

from pathlib import Path

from ucore.running.mountpoints import make_lasting
from ucore.values.model import Mount


def test_lasting_mount_points_are_made_as_their_sources_are(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    data, conf = tmp_path / "data", tmp_path / "site.conf"
    data.mkdir()
    conf.write_text("x\n")
    make_lasting(
        root,
        [
            Mount(str(data), "/scratch/data"),
            Mount(str(conf), "/etc/site.conf", readonly=True),
            Mount(str(data), "/only/this/run", transient=True),
        ],
    )
    assert (root / "scratch" / "data").is_dir()
    assert (root / "etc" / "site.conf").is_file()
    assert (root / "etc" / "site.conf").read_text() == ""
    assert not (root / "only").exists()  # transient: removed_after's business


def test_a_link_in_the_root_is_never_followed_out_of_it(tmp_path: Path) -> None:
    """An image's absolute link resolves inside the root, as chroot would: the point is
    made there, and nothing appears at the host path the link names."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "opt").symlink_to(outside)
    make_lasting(root, [Mount(str(tmp_path), "/opt/mnt")])
    assert not (outside / "mnt").exists()
    assert (root / str(outside).lstrip("/") / "mnt").is_dir()
