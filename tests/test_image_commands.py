"""The image commands besides pull: tag, rmi (with shared blobs), save and load (checked with
skopeo, an independent implementation), manifest inspect, and the terminal progress display."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pty
import resource
import select
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from support.cli import Ucore

from ucore.testing.images import TestImages
from ucore.testing.registry import RegistryServer
from ucore.values.oci import Platform


def test_tag_then_rmi_keeps_shared_blobs(
    ucore_cli: Ucore, registry: RegistryServer, test_images: TestImages
) -> None:
    ref = f"{registry.address}/busybox:latest"
    ucore_cli.ok("pull", ref)
    before = ucore_cli.blobs()
    ucore_cli.ok("tag", ref, "mine/copy:1")
    ucore_cli.ok("rmi", ref)
    assert ucore_cli.blobs() == before, "blobs still used by mine/copy:1 were removed"
    ucore_cli.fails(3, "inspect", ref)
    ucore_cli.ok("verify", "mine/copy:1")
    out = ucore_cli.ok("rmi", "mine/copy:1").stdout
    assert "3 blobs freed" in out
    assert ucore_cli.blobs() == set()
    ucore_cli.fails(3, "rmi", "mine/copy:1")
    ucore_cli.ok("rmi", "-f", "mine/copy:1")


def test_a_reference_with_an_unreadable_platform_breaks_nothing(
    ucore_cli: Ucore, registry: RegistryServer
) -> None:
    """A reference file whose platform cannot be read back (edited by hand, or written by an
    older ucore) still names a usable image, and never stops commands that read every
    reference (``images``, ``rmi`` of another image) from working."""
    odd, other = f"{registry.address}/busybox:latest", f"{registry.address}/multilayer:latest"
    ucore_cli.ok("pull", odd)
    ucore_cli.ok("pull", other)
    (record_file,) = [p for p in ucore_cli.refs() if json.loads(p.read_text())["ref"] == odd]
    record = json.loads(record_file.read_text())
    record_file.write_text(json.dumps({**record, "platform": "AMD 64/../x"}))
    listed = json.loads(ucore_cli.ok("images", "--json").stdout)
    assert {image["ref"] for image in listed} == {odd, other}
    ucore_cli.ok("rmi", other)
    assert json.loads(ucore_cli.ok("inspect", odd).stdout)["platform"] is None
    ucore_cli.ok("create", "--name", "still-runs", odd)


@pytest.mark.parametrize("damage", ["garbage", "directory", "huge", "no manifest", "deep"])
def test_a_damaged_reference_is_listed_and_removed_with_rmi_force(
    ucore_cli: Ucore, registry: RegistryServer, damage: str
) -> None:
    """A reference file damaged by hand or by a full disk on another tool's watch: ``images``
    lists it as damaged beside the sound ones, commands using it fail in one line, and
    ``rmi -f`` (only with -f: whether it was protected cannot be read) takes it away."""
    bad, good = f"{registry.address}/busybox:latest", f"{registry.address}/multilayer:latest"
    ucore_cli.ok("pull", bad)
    ucore_cli.ok("pull", good)
    (record_file,) = [p for p in ucore_cli.refs() if json.loads(p.read_text())["ref"] == bad]
    if damage == "directory":
        record_file.unlink()
        record_file.mkdir()
    elif damage == "huge":
        with open(record_file, "ab") as f:
            f.truncate(64 << 20)
    elif damage == "deep":  # past json's recursion limit: was an internal error
        record_file.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    else:
        record_file.write_bytes(b'{"manifest": 5}' if damage == "no manifest" else b"\x00\xff{")
    listed = {row["ref"]: row for row in json.loads(ucore_cli.ok("images", "--json").stdout)}
    assert set(listed) == {bad, good}
    assert "error" in listed[bad] and "error" not in listed[good]
    ucore_cli.fails(7, "create", bad)
    assert "rmi -f" in ucore_cli.fails(7, "rmi", bad).stderr
    ucore_cli.ok("rmi", "-f", bad)
    assert [row["ref"] for row in json.loads(ucore_cli.ok("images", "--json").stdout)] == [good]
    ucore_cli.ok("create", good)
    ucore_cli.ok("verify", good)


def test_prune_frees_only_blobs_no_image_uses(
    ucore_cli: Ucore, registry: RegistryServer, test_images: TestImages
) -> None:
    """Blobs no reference uses (here, those of a pull stopped before it wrote its reference,
    rebuilt by removing the reference by hand) go; every blob of a remaining image, and what
    is not a blob, stays. An empty store prunes to nothing."""
    assert ucore_cli.ok("prune").stdout.startswith("0 unused blobs removed")
    kept, dropped = f"{registry.address}/busybox:latest", f"{registry.address}/multilayer:latest"
    ucore_cli.ok("pull", kept)
    kept_blobs = ucore_cli.blobs()
    ucore_cli.ok("pull", dropped)
    orphans = ucore_cli.blobs() - kept_blobs
    assert orphans
    (record_file,) = [p for p in ucore_cli.refs() if json.loads(p.read_text())["ref"] == dropped]
    record_file.unlink()
    stray = ucore_cli.blob_dir() / "not-a-digest"
    stray.write_text("left alone")
    result = json.loads(ucore_cli.ok("prune", "--json").stdout)
    assert {blob["digest"] for blob in result["removed"]} == orphans
    assert result["freed"] == sum(blob["size"] for blob in result["removed"]) > 0
    assert stray.read_text() == "left alone"
    stray.unlink()
    assert ucore_cli.blobs() == kept_blobs
    ucore_cli.ok("verify", kept)
    ucore_cli.ok("create", kept)
    assert ucore_cli.ok("prune").stdout.startswith("0 unused blobs removed")


def test_prune_is_refused_while_the_store_is_in_use_or_a_reference_is_damaged(
    ucore_cli: Ucore, registry: RegistryServer
) -> None:
    """A pull in progress holds the store's gc lock shared (it may be about to reference a
    blob that looks unused); a damaged reference hides which blobs it uses. Either way prune
    removes nothing and says why in one line."""
    import fcntl

    good, bad = f"{registry.address}/busybox:latest", f"{registry.address}/multilayer:latest"
    ucore_cli.ok("pull", good)
    good_blobs = ucore_cli.blobs()
    ucore_cli.ok("pull", bad)
    before = ucore_cli.blobs()
    (record_file,) = [p for p in ucore_cli.refs() if json.loads(p.read_text())["ref"] == bad]
    record_file.write_bytes(b"\x00\xff{")
    result = ucore_cli.fails(7, "prune")
    assert "multilayer" in result.stderr and "rmi -f" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert ucore_cli.blobs() == before
    ucore_cli.ok("rmi", "-f", bad)
    with open(ucore_cli.store / "locks" / "gc.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)  # as a running pull holds it
        assert "pull" in ucore_cli.fails(7, "prune").stderr
        assert ucore_cli.blobs() == before
        assert "ucore prune" in ucore_cli.ok("rmi", good).stderr  # its blobs stay for now
        assert ucore_cli.blobs() == before
    ucore_cli.ok("pull", good)
    ucore_cli.ok("prune")
    assert ucore_cli.blobs() == good_blobs
    ucore_cli.ok("verify", good)


def test_verify_checks_each_layer_against_its_diff_id(ucore_cli: Ucore, tmp_path: Path) -> None:
    """A docker archive whose gzip layer uncompresses to other bytes than its config's
    diff_id says loads (each blob is stored under its own digest), but it is not sound:
    verify said "ok" and only create found out. Now verify finds it too; a sound image from
    the same layer verifies."""
    layer_tar = _tar({"hello.txt": b"hello\n"})
    diff_ids = {"bad": hashlib.sha256(b"other"), "good": hashlib.sha256(layer_tar)}
    for name, diff_id in diff_ids.items():
        rootfs = {"type": "layers", "diff_ids": [f"sha256:{diff_id.hexdigest()}"]}
        config = {"architecture": "amd64", "os": "linux", "rootfs": rootfs}
        entry = {"Config": "config.json", "RepoTags": [f"x/{name}:1"], "Layers": ["l.tar.gz"]}
        archive = tmp_path / f"{name}.tar"
        members = {
            "config.json": json.dumps(config).encode(),
            "l.tar.gz": gzip.compress(layer_tar, mtime=0),
            "manifest.json": json.dumps([entry]).encode(),
        }
        archive.write_bytes(_tar(members))
        ucore_cli.ok("load", "-i", str(archive))
    result = ucore_cli.fails(6, "verify", "x/bad:1")
    assert "diff_id" in result.stdout, result.stdout
    assert ucore_cli.ok("verify", "x/good:1").stdout.endswith("ok\n")
    ucore_cli.fails(6, "create", "x/bad:1")


def test_verify_reports_a_blob_that_cannot_be_read(
    ucore_cli: Ucore, registry: RegistryServer, test_images: TestImages
) -> None:
    ref = f"{registry.address}/busybox:latest"
    ucore_cli.ok("pull", ref)
    layer = test_images.busybox.layers[0].blob.digest
    blob = ucore_cli.blob_dir() / layer.split(":")[1]
    blob.unlink()
    blob.mkdir()
    result = ucore_cli.fails(6, "verify", ref)
    assert f"blob {layer} cannot be read" in result.stdout


def test_a_lock_file_that_is_a_symlink_is_one_line_and_not_followed(
    ucore_cli: Ucore, registry: RegistryServer, tmp_path: Path
) -> None:
    ref = f"{registry.address}/busybox:latest"
    ucore_cli.ok("pull", ref)
    lock = ucore_cli.store / "locks" / "gc.lock"
    lock.unlink(missing_ok=True)
    victim = tmp_path / "victim"
    lock.symlink_to(victim)
    assert "gc.lock" in ucore_cli.fails(7, "rmi", ref).stderr
    ucore_cli.fails(7, "create", ref)
    assert not victim.exists()
    lock.unlink()
    lock.mkdir()
    ucore_cli.fails(7, "rmi", ref)
    lock.rmdir()
    ucore_cli.ok("inspect", ref)  # the failed rmi left the image whole
    ucore_cli.ok("rmi", ref)


def test_short_name_finds_an_image_pulled_with_registry_option(
    ucore_cli: Ucore, registry: RegistryServer
) -> None:
    ucore_cli.ok("pull", f"--registry=http://{registry.address}", "busybox")
    assert json.loads(ucore_cli.ok("inspect", "busybox").stdout)["ref"] == (
        f"{registry.address}/busybox:latest"
    )


def test_save_is_read_by_skopeo_and_load_round_trips(
    ucore_cli: Ucore, registry: RegistryServer, tmp_path: Path
) -> None:
    ref = f"{registry.address}/multilayer:latest"
    ucore_cli.ok("pull", ref)
    config = json.loads(ucore_cli.ok("inspect", ref).stdout)["config"]
    archive = tmp_path / "saved.tar"
    ucore_cli.ok("save", "-o", str(archive), ref)
    info = json.loads(
        subprocess.run(
            ["skopeo", "inspect", f"docker-archive:{archive}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    assert info["Layers"] == config["rootfs"]["diff_ids"]  # uncompressed, checked layers
    subprocess.run(
        ["skopeo", "copy", "-q", f"docker-archive:{archive}", f"oci:{tmp_path}/oci:x"],
        check=True,
        capture_output=True,
    )
    ucore_cli.ok("rmi", ref)
    with open(archive, "rb") as f:  # from stdin, as in `ucore load < saved.tar`
        proc = subprocess.run(
            ucore_cli.argv("load"),
            stdin=f,
            capture_output=True,
            text=True,
            env=ucore_cli.env,
            timeout=60,
            check=False,
        )
    assert proc.returncode == 0, proc.stderr
    assert f"loaded {registry.address}/multilayer:latest" in proc.stdout
    ucore_cli.ok("verify", ref)
    assert json.loads(ucore_cli.ok("inspect", ref).stdout)["config"] == config


def test_load_reads_what_skopeo_writes(
    ucore_cli: Ucore, registry: RegistryServer, tmp_path: Path
) -> None:
    src = f"docker://{registry.address}/busybox:latest"
    docker_archive = tmp_path / "docker.tar"
    oci_archive = tmp_path / "oci.tar"
    for dest in (
        f"docker-archive:{docker_archive}:example.org/bb:v1",
        f"oci-archive:{oci_archive}:v2",
    ):
        subprocess.run(
            ["skopeo", "copy", "-q", "--src-tls-verify=false", src, dest],
            check=True,
            capture_output=True,
        )
    assert "loaded example.org/bb:v1" in ucore_cli.ok("load", "-i", str(docker_archive)).stdout
    # An OCI layout names only a tag: ucore asks for a full name instead of guessing one.
    ucore_cli.fails(2, "load", "-i", str(oci_archive))
    assert (
        "loaded example.org/bb:v2"
        in ucore_cli.ok("load", "-i", str(oci_archive), "--tag", "example.org/bb:v2").stdout
    )
    ucore_cli.ok("verify", "example.org/bb:v1", "example.org/bb:v2")
    ucore_cli.check_store()


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize(
    ("members", "code"),
    [
        ({"../../escape": b"x", "manifest.json": b"[]"}, 6),
        ({"manifest.json": b'[{"Config": "missing.json", "RepoTags": ["a/b:c"]}]'}, 6),
        ({"manifest.json": b"{not json"}, 6),
        (
            {
                "x.json": b'{"rootfs": {"diff_ids": ["sha256:' + b"0" * 64 + b'"]}}',
                "layer.tar": b"\0" * 1024,
                "manifest.json": b'[{"Config": "x.json", "RepoTags": ["a/b:c"],'
                b' "Layers": ["layer.tar"]}]',
            },
            6,
        ),
        ({}, 6),
        ({"manifest.json": b"[" * 100_000 + b"]" * 100_000}, 6),
        (
            {
                "x.json": b"[" * 100_000 + b"]" * 100_000,
                "manifest.json": b'[{"Config": "x.json", "RepoTags": ["a/b:c"]}]',
            },
            6,
        ),
        (
            {
                "x.json": b'{"rootfs": "layers"}',
                "manifest.json": b'[{"Config": "x.json", "RepoTags": ["a/b:c"]}]',
            },
            6,
        ),
        (
            {
                "x.json": b'{"rootfs": {"diff_ids": []}}',
                "manifest.json": b'[{"Config": "x.json", "RepoTags": "a/b:c"}]',
            },
            6,
        ),
    ],
)
def test_hostile_archives_are_refused_without_writing_outside_the_store(
    ucore_cli: Ucore, tmp_path: Path, members: dict[str, bytes], code: int
) -> None:
    archive = tmp_path / "work" / "evil.tar"
    archive.parent.mkdir()
    archive.write_bytes(_tar(members) if members else b"not a tar at all")
    before = sorted(p.name for p in tmp_path.iterdir() if p != ucore_cli.store)
    ucore_cli.fails(code, "load", "-i", str(archive))
    assert sorted(p.name for p in tmp_path.iterdir() if p != ucore_cli.store) == before
    assert not (tmp_path / "escape").exists() and not (archive.parent.parent / "escape").exists()
    assert ucore_cli.refs() == []
    assert ucore_cli.blobs() == set(), "blobs of a refused archive were left behind"
    ucore_cli.check_store()


def test_load_holds_one_member_in_memory_at_a_time(ucore_cli: Ucore, tmp_path: Path) -> None:
    """Twenty-four 16 MiB JSON members (384 MiB, a few hundred KiB gzip'd) under a 256 MiB
    data limit: each goes to the store and is read back only if a manifest names it."""
    archive = tmp_path / "many.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        for i in range(24):
            info = tarfile.TarInfo(f"config{i}.json")
            info.size = 16 << 20
            tar.addfile(info, io.BytesIO(bytes([i]) * info.size))
    limit = 256 << 20
    result = subprocess.run(
        ucore_cli.argv("load", "-i", str(archive)),
        capture_output=True,
        text=True,
        timeout=300,
        env=ucore_cli.env,
        check=False,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_DATA, (limit, limit)),
    )
    assert (result.returncode, result.stderr) == (6, "ucore: archive has no manifest.json\n")
    assert ucore_cli.blobs() == set()


def test_manifest_inspect_prints_what_the_registry_serves(
    ucore_cli: Ucore, registry: RegistryServer
) -> None:
    doc = json.loads(
        ucore_cli.ok("manifest", "inspect", f"{registry.address}/multiplatform").stdout
    )
    assert doc["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert len(doc["manifests"]) >= 3
    ucore_cli.fails(3, "manifest", "inspect", f"{registry.address}/nothing-here:latest")


def test_batch_pull_is_silent_and_terminal_pull_draws_progress(
    ucore_cli: Ucore, registry: RegistryServer
) -> None:
    ref = f"{registry.address}/multilayer:latest"
    quiet = ucore_cli.ok("pull", ref)
    assert quiet.stdout == "" and quiet.stderr == ""
    ucore_cli.ok("rmi", ref)
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        ucore_cli.argv("pull", ref),
        stdin=subprocess.DEVNULL,
        stdout=secondary,
        stderr=secondary,
        env=ucore_cli.env,
    )
    os.close(secondary)
    screen = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([primary], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(primary, 65536)
            except OSError:
                break
            if not chunk:
                break
            screen += chunk
        elif proc.poll() is not None:
            break
    proc.wait(10)
    os.close(primary)
    assert proc.returncode == 0, screen.decode(errors="replace")
    text = screen.decode(errors="replace")
    assert "\x1b[2K" in text and "[#" in text, text  # redrawn bars
    assert f"pulled {ref}" in text


def test_save_writes_through_no_planted_symlink(
    ucore_cli: Ucore, registry: RegistryServer, tmp_path: Path
) -> None:
    """``save -o out.tar`` wrote ``out.tar.PID.part`` with a plain ``open``: a symbolic link
    planted under that predictable name (in a shared directory) had the tarball written into
    its target, and then became the output. Links at the output itself are replaced, never
    followed, as a rename does."""
    ref = f"{registry.address}/busybox:latest"
    ucore_cli.ok("pull", ref)
    shared = tmp_path / "shared"
    shared.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    out = shared / "out.tar"
    plant = f"import os; os.symlink({str(victim)!r}, f'{out}.{{os.getpid()}}.part')"
    script = f"{plant}; import sys; from ucore.cli import main; sys.exit(main(sys.argv[1:]))"
    result = subprocess.run(
        [sys.executable, "-c", script, "save", "-o", str(out), ref],
        capture_output=True,
        text=True,
        env=ucore_cli.env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert victim.read_text() == "precious\n"
    assert not out.is_symlink() and tarfile.is_tarfile(out)
    linked = shared / "linked.tar"
    linked.symlink_to(victim)
    ucore_cli.ok("save", "-o", str(linked), ref)
    assert victim.read_text() == "precious\n"
    assert not linked.is_symlink() and tarfile.is_tarfile(linked)


def test_save_and_export_to_a_name_at_the_length_limit(
    ucore_cli: Ucore, registry: RegistryServer, tmp_path: Path
) -> None:
    """The temporary file beside the output had the output's name plus a suffix, so an
    output name near the filesystem's 255-byte limit could not be written at all."""
    ref = f"{registry.address}/busybox:latest"
    ucore_cli.ok("pull", ref)
    ucore_cli.ok("create", "--name", "c", ref)
    outputs = tmp_path / "out"
    outputs.mkdir()
    for command, source in (("save", ref), ("export", "c")):
        out = outputs / (command[0] * 251 + ".tar")
        ucore_cli.ok(command, "-o", str(out), source)
        assert tarfile.is_tarfile(out)
    assert len(list(outputs.iterdir())) == 2


@pytest.mark.parametrize("damage", ["flipped", "truncated"])
def test_failed_save_leaves_the_old_output_and_no_partial_file(
    ucore_cli: Ucore, registry: RegistryServer, tmp_path: Path, damage: str
) -> None:
    ref = f"{registry.address}/multilayer:latest"
    ucore_cli.ok("pull", ref)
    layer = json.loads(ucore_cli.ok("manifest", "inspect", ref).stdout)["layers"][-1]["digest"]
    blob = ucore_cli.blob_dir() / layer.split(":")[1]
    blob.chmod(0o644)
    data = blob.read_bytes()
    half = len(data) // 2
    flipped = data[:half] + bytes([data[half] ^ 0xFF]) + data[half + 1 :]
    blob.write_bytes(data[:half] if damage == "truncated" else flipped)
    work = tmp_path / "work"
    work.mkdir()
    out = work / "out.tar"
    out.write_text("the previous archive\n")
    ucore_cli.fails(6, "save", "-o", str(out), ref)
    assert out.read_text() == "the previous archive\n"
    assert sorted(p.name for p in work.iterdir()) == ["out.tar"]


@pytest.mark.parametrize("depth", [2, 1200])
def test_load_refuses_nested_image_indexes(ucore_cli: Ucore, tmp_path: Path, depth: int) -> None:
    """Each index names the next as a manifest for this platform: pulls refuse an index in an
    index, and so does load (a deep chain ran into the recursion limit, reported as invalid
    JSON)."""
    arch = Platform.host().architecture
    blobs: dict[str, bytes] = {}

    def add(doc: dict[str, object]) -> tuple[str, int]:
        raw = json.dumps(doc).encode()
        blobs[hashlib.sha256(raw).hexdigest()] = raw
        return hashlib.sha256(raw).hexdigest(), len(raw)

    manifest_type = "application/vnd.oci.image.manifest.v1+json"
    digest, size = add({"schemaVersion": 2, "mediaType": manifest_type, "layers": []})
    for _ in range(depth):
        entry = {"mediaType": manifest_type, "digest": f"sha256:{digest}", "size": size}
        platform = {"os": "linux", "architecture": arch}
        digest, size = add({"schemaVersion": 2, "manifests": [{**entry, "platform": platform}]})
    name = {"io.containerd.image.name": "example.org/nested:1"}
    entry = {"mediaType": manifest_type, "digest": f"sha256:{digest}", "size": size}
    index = {"schemaVersion": 2, "manifests": [{**entry, "annotations": name}]}
    members = {
        "oci-layout": b'{"imageLayoutVersion":"1.0.0"}',
        "index.json": json.dumps(index).encode(),
    }
    members.update({f"blobs/sha256/{hex_}": raw for hex_, raw in blobs.items()})
    archive = tmp_path / "nested.tar"
    archive.write_bytes(_tar(members))
    result = ucore_cli.fails(6, "load", "-i", str(archive))
    assert "nested image indexes are not supported" in result.stderr
    assert ucore_cli.refs() == [] and ucore_cli.blobs() == set()


@pytest.mark.parametrize("command", ["save", "export"])
def test_a_tarball_to_a_closed_stdout_is_a_usage_error(
    ucore_cli: Ucore, registry: RegistryServer, command: str
) -> None:
    """With descriptor 1 closed Python has no ``sys.stdout``: was an internal error."""
    ref = f"{registry.address}/busybox:latest"
    ucore_cli.ok("pull", ref)
    source = ucore_cli.ok("create", ref).stdout.strip() if command == "export" else ref
    closed = subprocess.run(
        ["sh", "-c", 'exec "$@" >&-', "sh", *ucore_cli.argv(command, source)],
        env=ucore_cli.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (closed.returncode, closed.stderr) == (
        2,
        f"ucore: {command}: no stdout to write to; use -o FILE\n",
    )
