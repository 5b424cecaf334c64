"""Discovery sources on synthetic hosts (no real GPU: trees of regular files standing for the
driver's nodes and files), the linker-cache reader on this machine's real cache, and the ELF
soname reader on real libraries."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from hosts import DRIVER, UUIDS, cdi_spec, gpu_host, within, write, write_spec

from ucore.values.errors import DeviceError
from ucore_gpu import cdi, containercli, elf, ldcache, scan
from ucore_gpu.discover import discover
from ucore_gpu.settings import Settings


def test_ldcache_reads_what_ldconfig_prints() -> None:
    """This machine's real cache, against ``ldconfig -p``."""
    ldconfig = shutil.which("ldconfig") or "/sbin/ldconfig"  # /sbin is not on a user's PATH
    printed = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, check=True)
    pairs = set()
    for line in printed.stdout.splitlines()[1:]:
        name, _, path = line.strip().partition(" => ")
        if "x86-64" in name and path:
            pairs.add((name.split()[0], path))
    if not pairs:
        pytest.skip("ldconfig -p lists no x86-64 library here (not an x86-64 host)")
    assert {(e.soname, e.path) for e in ldcache.read("/etc/ld.so.cache")} == pairs


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"glibc-ld.so.cache1.1" + b"\xff" * 40,
        b"\0" * 100,
        b"glibc-ld.so.cache1.1\0\0\0",  # cut before its flags byte
        b"ld.so-1.7.0\0\xff\xff\xff\xff",  # an old header claiming 2**32 entries
    ],
)
def test_ldcache_damaged_is_empty(tmp_path: Path, data: bytes) -> None:
    (tmp_path / "cache").write_bytes(data)
    assert ldcache.read(str(tmp_path / "cache")) == []


def test_elf_soname_of_real_libraries(tmp_path: Path) -> None:
    assert elf.soname("/lib/x86_64-linux-gnu/libc.so.6") == "libc.so.6"
    assert elf.soname("/bin/true") is None  # an executable names no soname
    (tmp_path / "junk").write_bytes(b"\x7fELF" + b"\x02\x01" + b"\xff" * 200)
    assert elf.soname(str(tmp_path / "junk")) is None


def test_scan_finds_gpus_in_pci_order_with_uuids(tmp_path: Path) -> None:
    found = scan.scan(gpu_host(tmp_path))
    assert found.driver == DRIVER
    assert [g.uuid for g in found.gpus] == UUIDS
    assert [g.nodes for g in found.gpus] == [(f"/dev/nvidia{i}",) for i in range(4)]
    assert found.control == ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")
    assert "/usr/bin/nvidia-smi" in found.binaries


def test_scan_takes_only_the_running_drivers_libraries(tmp_path: Path) -> None:
    found = scan.scan(gpu_host(tmp_path))
    names = sorted(os.path.basename(p) for p in found.libraries)
    assert names == [
        f"libcuda.so.{DRIVER}",
        f"libnvidia-ml.so.{DRIVER}",
        f"libnvidia-ptxjitcompiler.so.{DRIVER}",
    ]
    assert any("libnvidia-nvvm.so.535.104.05" in n for n in found.notes), found.notes


@pytest.mark.parametrize("minor", ["\u00b2", "9" * 5000, "-1", ""])
def test_scan_skips_a_gpu_with_an_odd_minor(tmp_path: Path, minor: str) -> None:
    """``str.isdigit`` takes a superscript that ``int`` refuses, and ``int`` refuses more
    than 4300 digits: such a file is skipped, never the end of discovery."""
    settings = gpu_host(tmp_path, gpus=2)
    info = min((tmp_path / "proc/driver/nvidia/gpus").iterdir()) / "information"
    info.write_text(info.read_text().replace("Device Minor: \t 0", f"Device Minor: \t {minor}"))
    assert [g.uuid for g in scan.scan(settings).gpus] == [UUIDS[1]]


def test_cdi_device_named_by_a_huge_number(tmp_path: Path) -> None:
    settings = gpu_host(tmp_path)
    spec = cdi_spec(tmp_path)
    spec["devices"][0]["name"] = "9" * 5000
    write_spec(tmp_path, spec)
    assert len(discover(settings).inventory.gpus) == 2


def test_scan_without_per_gpu_files_numbers_the_nodes(tmp_path: Path) -> None:
    found = scan.scan(gpu_host(tmp_path, gpus=2, procfs=False))
    assert [(g.number, g.uuid) for g in found.gpus] == [(0, ""), (1, "")]


def test_scan_without_a_driver(tmp_path: Path) -> None:
    found = scan.scan(Settings(root=str(tmp_path)))
    assert not found.gpus and "no NVIDIA kernel driver" in found.notes[0]


def test_scan_reads_mig_instances(tmp_path: Path) -> None:
    settings = gpu_host(tmp_path, gpus=1)
    base = "/proc/driver/nvidia/capabilities/gpu0/mig"
    write(tmp_path, f"{base}/gi1/access", "DeviceFileMinor: 12\n")
    write(tmp_path, f"{base}/gi1/ci0/access", "DeviceFileMinor: 13\n")
    mig = [g for g in scan.scan(settings).gpus if g.number < 0]
    assert len(mig) == 1
    assert mig[0].names == ("0:1:0",)
    assert mig[0].nodes == (
        "/dev/nvidia0",
        "/dev/nvidia-caps/nvidia-cap12",
        "/dev/nvidia-caps/nvidia-cap13",
    )


@pytest.mark.parametrize(
    ("path", "gpus"),
    [
        ("/etc/ld.so.cache", 2),
        ("/proc/driver/nvidia/version", 0),
        ("/proc/driver/nvidia/gpus/0000:1b:00.0/information", 1),
        ("/usr/lib/x86_64-linux-gnu/libcuda.so.1", 2),
    ],
)
def test_a_fifo_in_place_of_a_file_is_not_waited_on(tmp_path: Path, path: str, gpus: int) -> None:
    """A FIFO without a writer blocks an ordinary open or read for ever: discovery reads such
    a file as missing."""
    settings = gpu_host(tmp_path, gpus=2)
    target = tmp_path / path.lstrip("/")
    if target.exists() or target.is_symlink():
        target.unlink()
    os.mkfifo(target)
    with within(10):
        assert len(discover(settings).inventory.gpus) == gpus
        assert elf.soname(str(target)) is None


def test_cdi_spec_comes_first_and_groups_names(tmp_path: Path) -> None:
    settings = gpu_host(tmp_path)
    write_spec(tmp_path, cdi_spec(tmp_path))
    found = discover(settings)
    inv = found.inventory
    assert inv.source == "cdi /etc/cdi/nvidia.json"
    assert [(g.number, g.uuid) for g in inv.gpus] == [(0, UUIDS[0]), (1, UUIDS[1])]
    assert inv.gpus[0].pci == "0000:1b:00.0"  # from the driver's files
    assert [s for s, _ in found.sources] == ["cdi", "container-cli", "scan"]
    assert found.sources[2][1] == "not consulted"
    assert ("NVIDIA_CTK_LIBCUDA_DIR", "/usr/lib/x86_64-linux-gnu") in inv.env
    assert all(name != "NVIDIA_VISIBLE_DEVICES" for name, _ in inv.env)
    assert any("create-symlinks: reproduced" in n for n in inv.notes)


def test_yaml_spec(tmp_path: Path) -> None:
    settings = gpu_host(tmp_path)
    write(tmp_path, "/var/run/cdi/nvidia.yaml", yaml.safe_dump(cdi_spec(tmp_path, gpus=3)))
    assert len(discover(settings).inventory.gpus) == 3


def test_no_spec_then_scan(tmp_path: Path) -> None:
    found = discover(gpu_host(tmp_path))
    assert found.inventory.source == "scan"
    assert found.sources[0][1].startswith("no spec of kind nvidia.com/gpu")
    assert found.sources[1] == ("container-cli", "nvidia-container-cli not installed")


def test_container_cli_source(tmp_path: Path) -> None:
    """A stand-in for ``nvidia-container-cli list`` inside the synthetic root."""
    settings = gpu_host(tmp_path)
    lines = [
        "/dev/nvidiactl",
        "/dev/nvidia0",
        "/dev/nvidia1",
        "/usr/bin/nvidia-smi",
        f"/usr/lib/x86_64-linux-gnu/libcuda.so.{DRIVER}",
        "/usr/lib64/libcuda.so.535.104.05",
    ]
    write(
        tmp_path,
        "/usr/bin/nvidia-container-cli",
        "#!/bin/sh\n[ \"$1\" = list ] || exit 1\nprintf '%s\\n' " + " ".join(lines) + "\n",
        0o755,
    )
    inv = discover(settings).inventory
    assert inv.source == "nvidia-container-cli"
    assert [g.uuid for g in inv.gpus] == UUIDS[:2]
    assert inv.libraries == (f"/usr/lib/x86_64-linux-gnu/libcuda.so.{DRIVER}",)


def test_container_cli_failing_falls_back(tmp_path: Path) -> None:
    settings = gpu_host(tmp_path)
    write(
        tmp_path,
        "/usr/bin/nvidia-container-cli",
        "#!/bin/sh\necho 'nvml error' >&2; exit 1\n",
        0o755,
    )
    found = discover(settings)
    assert found.inventory.source == "scan"
    assert found.sources[1] == ("container-cli", "nvidia-container-cli list failed: nvml error")


def test_container_cli_listing_odd_paths(tmp_path: Path) -> None:
    """A line that is not UTF-8 is skipped, not the end of discovery; a FIFO named as a
    library (whose soname read would block) and a node that does not exist are left out."""
    settings = gpu_host(tmp_path)
    os.mkfifo(tmp_path / "usr/lib/x86_64-linux-gnu/libnvidia-cfg.so.550.54.15")
    write(
        tmp_path,
        "/usr/bin/nvidia-container-cli",
        "#!/bin/sh\nprintf '/dev/nvidia0\\n/dev/nvidia-gone\\n/usr/lib/\\377.so\\n"
        f"/usr/lib/x86_64-linux-gnu/libnvidia-cfg.so.{DRIVER}\\n"
        f"/usr/lib/x86_64-linux-gnu/libcuda.so.{DRIVER}\\n'\n",
        0o755,
    )
    with within(10):
        inv = discover(settings).inventory
    assert inv.source == "nvidia-container-cli"
    assert inv.libraries == (f"/usr/lib/x86_64-linux-gnu/libcuda.so.{DRIVER}",)
    assert inv.control == ()


@pytest.mark.parametrize(
    ("script", "why"),
    [
        ("head -c 3000000 /dev/zero", "printed more than 1 MiB"),
        ("sleep 60 & sleep 60", "did not finish within 1 s"),
        ("(sleep 60; echo /dev/nvidia0)", "did not finish within 1 s"),
    ],
)
def test_container_cli_flooding_or_hanging_is_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str, why: str
) -> None:
    """Its output is bounded as it comes, and a tool whose children keep the pipes open
    after it is killed is not waited for."""
    monkeypatch.setattr(containercli, "TIMEOUT", 1.0)
    settings = gpu_host(tmp_path)
    write(tmp_path, "/usr/bin/nvidia-container-cli", f"#!/bin/sh\n{script}\n", 0o755)
    with within(10):
        found = discover(settings)
    assert found.inventory.source == "scan"
    assert found.sources[1] == ("container-cli", f"nvidia-container-cli list {why}")


# --- hostile or damaged CDI specs -----------------------------------------------------------


def _spec_error(
    tmp_path: Path, spec: object = None, raw: str | None = None, name: str = "nvidia.json"
) -> str:
    settings = gpu_host(tmp_path)
    write_spec(tmp_path, spec, name=name, raw=raw)
    with pytest.raises(DeviceError) as err:
        discover(settings)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_malformed_json(tmp_path: Path) -> None:
    assert "not valid YAML or JSON" in _spec_error(tmp_path, raw='{"cdiVersion": ')


def test_malformed_yaml(tmp_path: Path) -> None:
    assert "not valid YAML or JSON" in _spec_error(tmp_path, raw="a: [1, 2\n", name="x.yaml")


_LAUGHS = (
    "a: &a ["
    + ", ".join(["lol"] * 9)
    + "]\n"
    + "".join(f"{b}: &{b} [" + ", ".join([f"*{a}"] * 9) + "]\n" for a, b in zip("abcde", "bcdef"))
)


@pytest.mark.parametrize(
    "part",
    [
        "cdiVersion: *f\nkind: nvidia.com/gpu\n",
        "cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ncontainerEdits: {env: [*f]}\n",
        "cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ncontainerEdits: {deviceNodes: [{path: *f}]}\n",
        "cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ncontainerEdits: {hooks: [{path: *f}]}\n",
    ],
)
def test_alias_bomb_is_not_spelled_out(tmp_path: Path, part: str) -> None:
    """YAML aliases make a few hundred bytes a structure of 9**6 strings here (9**9 and more
    in a real attack, where spelling it out in a message never ends)."""
    settings = gpu_host(tmp_path)
    write_spec(tmp_path, None, name="x.yaml", raw=_LAUGHS + part)
    try:
        found = cdi.discover(settings, DRIVER)
    except DeviceError as exc:
        message = str(exc)
    else:
        assert found is not None
        message = " ".join(found.notes)
    assert len(message) < 2000


def test_not_a_mapping(tmp_path: Path) -> None:
    assert "not a mapping" in _spec_error(tmp_path, raw="[1, 2]")


def test_device_node_outside_dev(tmp_path: Path) -> None:
    spec = cdi_spec(tmp_path)
    spec["devices"][0]["containerEdits"]["deviceNodes"] = [{"path": "/etc/shadow"}]
    assert "/etc/shadow is not under /dev" in _spec_error(tmp_path, spec)


def test_dotdot_in_a_path(tmp_path: Path) -> None:
    spec = cdi_spec(tmp_path)
    spec["containerEdits"]["mounts"][0]["hostPath"] = "/usr/lib/../../etc/shadow"
    assert "not a plain path" in _spec_error(tmp_path, spec)


def test_host_file_outside_driver_places(tmp_path: Path) -> None:
    write(tmp_path, "/root/.ssh/id_rsa", "secret")
    spec = cdi_spec(tmp_path)
    spec["containerEdits"]["mounts"][0]["hostPath"] = "/root/.ssh/id_rsa"
    assert "not where drivers install files" in _spec_error(tmp_path, spec)


@pytest.mark.parametrize("target", ["/proc/self/root/x", "/sys", "/dev", "/"])
def test_container_path_over_the_engines_own_mounts(tmp_path: Path, target: str) -> None:
    spec = cdi_spec(tmp_path)
    spec["containerEdits"]["mounts"][0]["containerPath"] = target
    assert f"containerPath {target} is refused" in _spec_error(tmp_path, spec)


def test_missing_host_file(tmp_path: Path) -> None:
    spec = cdi_spec(tmp_path)
    spec["containerEdits"]["mounts"][0]["hostPath"] = "/usr/lib/libcuda.so.1"
    assert "does not exist on this host" in _spec_error(tmp_path, spec)


def test_preload_in_env_is_refused(tmp_path: Path) -> None:
    spec = cdi_spec(tmp_path)
    spec["containerEdits"]["env"] = ["LD_PRELOAD=/tmp/evil.so"]
    assert "LD_PRELOAD" in _spec_error(tmp_path, spec)


def test_too_many_entries(tmp_path: Path) -> None:
    spec = cdi_spec(tmp_path)
    spec["containerEdits"]["deviceNodes"] = [{"path": "/dev/nvidiactl"}] * (cdi.MAX_ITEMS + 1)
    assert "too many entries" in _spec_error(tmp_path, spec)


def test_unknown_cdi_version(tmp_path: Path) -> None:
    assert "cdiVersion" in _spec_error(tmp_path, cdi_spec(tmp_path, cdiVersion="9"))


def test_spec_writable_by_others_is_not_trusted(tmp_path: Path) -> None:
    settings = gpu_host(tmp_path)
    path = write_spec(tmp_path, cdi_spec(tmp_path))
    path.chmod(0o666)
    with pytest.raises(DeviceError, match="writable by others"):
        discover(settings)


def test_spec_symlink_is_not_followed(tmp_path: Path) -> None:
    settings = gpu_host(tmp_path)
    real = write(tmp_path, "/elsewhere.json", json.dumps(cdi_spec(tmp_path)))
    (tmp_path / "etc/cdi").mkdir(parents=True)
    os.symlink(real, tmp_path / "etc/cdi/nvidia.json")
    with pytest.raises(DeviceError, match=r"CDI spec /etc/cdi/nvidia\.json"):
        discover(settings)


def test_spec_of_another_kind_is_ignored(tmp_path: Path) -> None:
    settings = gpu_host(tmp_path)
    write_spec(tmp_path, {"cdiVersion": "0.5.0", "kind": "amd.com/gpu", "devices": []})
    assert discover(settings).inventory.source == "scan"
