"""The synthetic GPU host builder (``support.gpuhost``) checked on its own.

Everything here is synthetic: no GPU, no NVIDIA driver, no InfiniBand adapter. The "GPUs" are
``/dev/nvidiaN`` regular files holding UUIDs, and the driver libraries are stubs compiled with
the host's ``cc`` that count those files. These tests pin down that the stand-ins look like the
real thing to the files and tools a GPU plugin reads (sonames, ``ld.so.cache``, CDI specs,
``nvidia-container-cli``), so that plugin tests built on them mean something.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import zlib
from pathlib import Path

import pytest
import yaml
from support import gpuhost
from support.gpuhost import GpuHost, build_host


@pytest.fixture
def host(tmp_path: Path) -> GpuHost:
    return build_host(tmp_path / "root")


def _host_nvidia_nodes() -> int:
    """How many ``/dev/nvidia<N>`` the synthetic libcuda can open on this machine (none on a
    machine without a GPU; the real nodes where there is one)."""
    count = 0
    for name in os.listdir("/dev"):
        if re.fullmatch(r"nvidia\d+", name):
            try:
                os.close(os.open(f"/dev/{name}", os.O_RDONLY | os.O_NONBLOCK))
                count += 1
            except OSError:
                pass
    return count


def _run(argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    scrub = ("CUDA_VISIBLE_DEVICES", gpuhost.DEV_DIR_ENV)
    environ = {k: v for k, v in os.environ.items() if k not in scrub}
    return subprocess.run(argv, env={**environ, **env}, capture_output=True, text=True, timeout=60)


def _query(host: GpuHost, name: str, libdir: str = gpuhost.LIBDIR, **env: str) -> str:
    result = _run([str(gpuhost.program(name))], LD_LIBRARY_PATH=str(host.path(libdir)), **env)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _synthetic(host: GpuHost, name: str, **env: str) -> str:
    """Run a query program with the synthetic libraries scanning the tree's ``dev``."""
    return _query(host, name, **{gpuhost.DEV_DIR_ENV: str(host.path("/dev")), **env})


# --------------------------------------------------------------------------------------------
# The tree


def test_synthetic_tree_has_the_driver_files_a_plugin_reads(host: GpuHost) -> None:
    """The synthetic host's /proc, /dev and sysfs look as the NVIDIA driver and kernel lay
    them out: minor == index == PCI order, nodes are 0666 files holding their UUIDs."""
    version = host.path("/proc/driver/nvidia/version").read_text()
    assert version.startswith(
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5"
    )
    assert len(host.uuids) == len(set(host.uuids)) == 4
    assert host.pci == sorted(host.pci)
    for i, (uuid, bus) in enumerate(zip(host.uuids, host.pci)):
        assert re.fullmatch(r"GPU-[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}", uuid)
        info = host.path(f"/proc/driver/nvidia/gpus/{bus}/information").read_text()
        assert "Model: \t\t NVIDIA H200\n" in info
        assert f"GPU UUID: \t {uuid}\n" in info
        assert f"Bus Location: \t {bus}\n" in info
        assert f"Device Minor: \t {i}\n" in info
        assert info.endswith("GPU Excluded:\t No\n")
        node = host.path(f"/dev/nvidia{i}")
        assert node.read_text() == uuid + "\n"
        assert node.is_file() and node.stat().st_mode & 0o777 == 0o666
    for ctl in host.control_nodes:
        assert host.path(ctl).is_file()
    assert not host.path("/dev/nvidia-caps").exists()


def test_synthetic_infiniband_sysfs_links_like_the_kernel(host: GpuHost) -> None:
    """Synthetic HCAs: /sys/class entries are relative links into the PCI device, whose
    ``device`` links lead back to it; /dev/infiniband files name their HCA."""
    for i, (name, bus) in enumerate(host.hcas):
        ib = host.path(f"/sys/class/infiniband/{name}")
        assert not os.readlink(ib).startswith("/")
        assert ib.resolve() == host.path(f"/sys/devices/pci0000:3a/{bus}/infiniband/{name}")
        assert (ib / "device").resolve() == host.path(f"/sys/devices/pci0000:3a/{bus}")
        assert (ib / "node_type").read_text() == "1: CA\n"
        assert (ib / "ports/1/state").read_text() == "4: ACTIVE\n"
        assert (ib / "ports/1/link_layer").read_text() == "InfiniBand\n"
        verbs = host.path(f"/sys/class/infiniband_verbs/uverbs{i}")
        assert (verbs / "ibdev").read_text() == name + "\n"
        assert (verbs / "dev").read_text() == f"231:{192 + i}\n"
        umad = host.path(f"/sys/class/infiniband_mad/umad{i}")
        assert (umad / "ibdev").read_text() == name + "\n"
        assert (umad / "port").read_text() == "1\n"
        assert host.path(f"/dev/infiniband/uverbs{i}").read_text() == name + "\n"
    assert host.path("/sys/class/infiniband_verbs/abi_version").is_file()
    assert host.ib_nodes[-1] == "/dev/infiniband/rdma_cm"
    assert host.path("/etc/libibverbs.d/mlx5.driver").read_text() == "driver mlx5\n"
    assert host.path("/usr/lib/x86_64-linux-gnu/libibverbs/libmlx5-rdmav34.so").is_file()


def test_synthetic_mig_capabilities(tmp_path: Path) -> None:
    """With MIG on the synthetic GPU 0: the capability files name nvidia-cap minors that
    exist in /dev/nvidia-caps, numbered as the driver numbers them."""
    host = build_host(tmp_path / "root", gpus=2, mig=True)
    caps = host.path("/proc/driver/nvidia/capabilities")
    assert (caps / "mig/config").read_text().startswith("DeviceFileMinor: 1\n")
    assert (caps / "mig/monitor").read_text().startswith("DeviceFileMinor: 2\n")
    (mig,) = host.mig_devices
    assert mig.gi_access.endswith("gpu0/mig/gi1/access")
    assert host.path(mig.gi_access).read_text().startswith("DeviceFileMinor: 12\n")
    assert host.path(mig.ci_access).read_text().startswith("DeviceFileMinor: 13\n")
    assert mig.gi_node == "/dev/nvidia-caps/nvidia-cap12"
    for node in ("/dev/nvidia-caps/nvidia-cap1", "/dev/nvidia-caps/nvidia-cap2", mig.ci_node):
        assert host.path(node).is_file()
    minors = host.path("/proc/driver/nvidia-caps/mig-minors").read_text().splitlines()
    assert "gpu0/gi1/access 12" in minors and "gpu1/gi0/ci0/access 139" in minors


# --------------------------------------------------------------------------------------------
# Libraries and the programs that load them


def _readelf_soname(path: Path) -> str | None:
    out = subprocess.run(
        ["readelf", "-d", str(path)], capture_output=True, text=True, check=True
    ).stdout
    found = re.search(r"\(SONAME\)\s+Library soname: \[([^\]]+)\]", out)
    return found.group(1) if found else None


def test_synthetic_driver_libraries_have_the_real_sonames(host: GpuHost) -> None:
    """The synthetic driver's shared objects carry the sonames NVIDIA's do (readelf agrees
    with the plugin-side ELF reader), and the soname links exist."""
    expected = {
        "libcuda.so": "libcuda.so.1",
        "libnvidia-ml.so": "libnvidia-ml.so.1",
        "libnvidia-ptxjitcompiler.so": "libnvidia-ptxjitcompiler.so.1",
        "libnvidia-nvvm.so": "libnvidia-nvvm.so.4",
        "libnvidia-opencl.so": "libnvidia-opencl.so.1",
        "libnvidia-gpucomp.so": "libnvidia-gpucomp.so.550.54.15",
        "libnvidia-eglcore.so": "libnvidia-eglcore.so.550.54.15",
        "libEGL_nvidia.so": "libEGL_nvidia.so.0",
        "libGLX_nvidia.so": "libGLX_nvidia.so.0",
    }
    assert len(host.libraries) == len(expected)
    for lib in host.libraries + host.stale_libraries:
        path = host.path(lib)
        stem = path.name[: -len(".550.54.15")] if lib in host.libraries else None
        soname = _readelf_soname(path)
        info = gpuhost.elf_info(path)
        assert info is not None and info.soname == soname
        if stem is not None:
            assert soname == expected[stem], lib
        assert (path.parent / str(soname)).resolve() == path.resolve()
    assert os.readlink(host.path("/usr/lib/x86_64-linux-gnu/libcuda.so")) == "libcuda.so.1"
    assert os.readlink(host.path("/usr/lib64/libcuda.so.1")) == "libcuda.so.535.104.05"


def test_synthetic_cudaquery_sees_the_machines_own_dev(host: GpuHost) -> None:
    """Synthetic libcuda, loaded by the query program through LD_LIBRARY_PATH on the host,
    scans the real /dev: no synthetic GPU is visible there (and a real one only where the
    machine has it)."""
    expected = _host_nvidia_nodes()
    assert _query(host, "cudaquery") == f"devices: {expected}\ncuda: 12040\n"
    assert _query(host, "nvmlquery") == f"driver: 550.54.15\ndevices: {expected}\n"


def test_synthetic_query_without_the_library_fails_clearly(tmp_path: Path) -> None:
    """Without a libcuda on the search path the query program says why and exits 3."""
    result = _run([str(gpuhost.program("cudaquery"))], LD_LIBRARY_PATH=str(tmp_path))
    if result.returncode == 0:
        pytest.skip("this machine has a libcuda.so.1 of its own")
    assert result.returncode == 3
    assert result.stderr.startswith("cudaquery: ") and "libcuda.so.1" in result.stderr


@pytest.mark.parametrize(
    ("visible", "count"),
    [
        (None, 4),
        ("", 0),
        ("1,3", 2),
        ("0,7,1", 1),  # the walk stops at the first index that selects nothing
        ("2,2", 1),
        ("3,2,1,0", 4),
        ("-1", 0),
        ("uuid:3", 1),
        ("uuid:3,prefix:1", 2),
        ("GPU-", 0),
        ("GPU-nothing-like-it,0", 0),
    ],
)
def test_synthetic_libcuda_counts_like_cuda(host: GpuHost, visible: str | None, count: int) -> None:
    """Synthetic libcuda over the tree's dev: CUDA_VISIBLE_DEVICES by index, UUID or unique
    UUID prefix, ending at the first token that selects nothing; distinct devices counted."""
    env = {}
    if visible is not None:
        for i, uuid in enumerate(host.uuids):
            visible = visible.replace(f"uuid:{i}", uuid).replace(f"prefix:{i}", uuid[:12])
        env["CUDA_VISIBLE_DEVICES"] = visible
    assert _synthetic(host, "cudaquery", **env) == f"devices: {count}\ncuda: 12040\n"
    assert _synthetic(host, "nvmlquery", **env) == f"driver: 550.54.15\ndevices: {count}\n"


def test_synthetic_libcuda_counts_only_nodes_it_can_open(host: GpuHost) -> None:
    """Synthetic GPU nodes a container was not given (absent, or unreadable for an
    unprivileged user) are not counted, and indices follow the ones that remain."""
    host.path("/dev/nvidia1").unlink()
    assert _synthetic(host, "cudaquery").startswith("devices: 3\n")
    assert _synthetic(host, "cudaquery", CUDA_VISIBLE_DEVICES="2").startswith("devices: 1\n")
    assert _synthetic(host, "cudaquery", CUDA_VISIBLE_DEVICES="3").startswith("devices: 0\n")
    if os.geteuid() != 0:
        host.path("/dev/nvidia2").chmod(0)
        assert _synthetic(host, "cudaquery").startswith("devices: 2\n")


def test_synthetic_stale_driver_is_recognisable(host: GpuHost) -> None:
    """The synthetic stale driver in /usr/lib64 reports 99 devices and its own versions."""
    out = _synthetic(host, "cudaquery", libdir=gpuhost.STALE_LIBDIR)
    assert out == "devices: 99\ncuda: 12020\n"
    out = _synthetic(host, "nvmlquery", libdir=gpuhost.STALE_LIBDIR)
    assert out == "driver: 535.104.05\ndevices: 99\n"


def test_synthetic_nvidia_smi_lists_readable_nodes(host: GpuHost) -> None:
    """The synthetic nvidia-smi (a sh script) lists the GPU files it can read by UUID."""
    smi = str(host.path("/usr/bin/nvidia-smi"))
    shells = ["sh"] + (["busybox", "sh"] if shutil.which("busybox") else [])
    dev = {gpuhost.DEV_DIR_ENV: str(host.path("/dev"))}
    for shell in (shells[:1], shells[1:]):
        if not shell:
            continue
        out = _run([*shell, smi, "-L"], **dev)
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines() == [
            f"GPU {i}: NVIDIA H200 (UUID: {uuid})" for i, uuid in enumerate(host.uuids)
        ]
        table = _run([*shell, smi], **dev).stdout
        assert "Driver Version: 550.54.15" in table and "CUDA Version: 12.4" in table
        assert "00000000:43:00.0" in table
    host.path("/dev/nvidia0").unlink()
    listed = _run(["sh", smi, "-L"], **dev).stdout.splitlines()
    assert listed[0] == f"GPU 0: NVIDIA H200 (UUID: {host.uuids[1]})"
    empty = _run(["sh", smi, "-L"], **{gpuhost.DEV_DIR_ENV: str(host.path("/proc"))})
    assert (empty.returncode, empty.stdout) == (6, "No devices were found\n")


# --------------------------------------------------------------------------------------------
# ld.so.cache


#: glibc's ldconfig (Debian's essential libc-bin) lives in /sbin, which a user's PATH lacks.
LDCONFIG = shutil.which("ldconfig") or "/sbin/ldconfig"


def _ldconfig_print(cache: Path) -> list[str]:
    """``ldconfig -p`` of any cache file: the library lines only (the header names the file,
    and ldconfig's own caches add a "generated by" line)."""
    out = subprocess.run(
        [LDCONFIG, "-p", "-C", str(cache)], capture_output=True, text=True, check=True
    ).stdout
    return [line for line in out.splitlines() if line.startswith("\t")]


def _real_ldconfig(root: Path) -> Path:
    """The real ldconfig's cache for ``root`` (``-r``: chroot as root, path emulation when
    unprivileged), without touching links or the machine's own caches."""
    subprocess.run(
        [LDCONFIG, "-X", "-r", str(root), "-C", "/ldconfig.cache", "-f", "/etc/ld.so.conf"],
        check=True,
        capture_output=True,
    )
    return root / "ldconfig.cache"


def test_synthetic_ld_cache_matches_ldconfig(host: GpuHost) -> None:
    """The synthetic host's ld.so.cache (written in Python) reads back, through the real
    ``ldconfig -p``, exactly as the cache ldconfig itself builds for the tree: same keys,
    paths, flags and order (the current driver's libcuda.so.1 before the stale one)."""
    ours = _ldconfig_print(host.path("/etc/ld.so.cache"))
    assert ours == _ldconfig_print(_real_ldconfig(host.root))
    cuda = [line for line in ours if line.startswith("\tlibcuda.so.1 ")]
    assert cuda == [
        "\tlibcuda.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so.1",
        "\tlibcuda.so.1 (libc6,x86-64) => /usr/lib64/libcuda.so.1",
    ]
    entries = gpuhost.read_ld_so_cache(host.path("/etc/ld.so.cache"))
    assert {e.key for e in entries} >= {"libcuda.so.1", "libnvidia-ml.so.1", "libibverbs.so.1"}


def test_ld_cache_writer_agrees_with_ldconfig_on_odd_directories(tmp_path: Path) -> None:
    """The cache writer on real host libraries next to synthetic awkward cases: numeric
    version order (.so.10 after .so.9), a soname shared by two directories, a development
    link that is not to the soname, a library without soname, a file that is not ELF."""
    root = tmp_path / "root"
    a, b = root / "opt/a", root / "opt/b"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    for lib in ("libc.so.6", "libm.so.6"):
        shutil.copyfile(gpuhost._host_lib(lib), a / lib)
    (a / "libm.so").symlink_to("libm.so.6")
    for version in ("9", "10", "1.2.3"):
        built = gpuhost.shared_object(gpuhost._STUB_C, f"libnum.so.{version}")
        shutil.copyfile(built, a / f"libnum.so.{version}")
    shutil.copyfile(a / "libnum.so.9", b / "libnum.so.9")
    shutil.copyfile(gpuhost.shared_object(gpuhost._STUB_C, "libbad.so.1"), a / "libbadimp.so.9.99")
    (a / "libbad.so").symlink_to("libbadimp.so.9.99")
    shutil.copyfile(gpuhost.shared_object(gpuhost._STUB_C, None), b / "libnosoname.so.2")
    (b / "libjunk.so.1").write_text("not a library\n")
    (b / "libdangling.so.1").symlink_to("nowhere")
    (root / "etc").mkdir()
    (root / "etc/ld.so.conf").write_text("/opt/a\n# a comment\n/opt/b/\n")

    gpuhost.update_ld_cache(root)
    ours = _ldconfig_print(root / "etc/ld.so.cache")
    assert ours == _ldconfig_print(_real_ldconfig(root))
    keys = [line.split()[0] for line in ours]
    assert keys.index("libnum.so.10") < keys.index("libnum.so.9") < keys.index("libnum.so.1.2.3")
    assert keys.count("libnum.so.9") == 2 and "libjunk.so.1" not in keys


def test_dl_cache_libcmp_orders_versions_numerically() -> None:
    cmp = gpuhost.dl_cache_libcmp
    assert cmp("libfoo.so.10", "libfoo.so.9") > 0
    assert cmp("libfoo.so.1", "libfoo.so") > 0
    assert cmp("libfoo.so", "libfoo.so") == 0
    assert cmp("libA.so", "liba.so") < 0
    assert cmp("lib1", "liba") > 0  # a digit sorts after any other character


# --------------------------------------------------------------------------------------------
# CDI spec and nvidia-container-cli


def test_synthetic_cdi_spec_has_nvidia_ctk_shape(tmp_path: Path) -> None:
    """The synthetic host's CDI spec: valid JSON with the documented keys, one device per
    index, UUID and MIG device plus "all", host-style paths, identical host and container
    paths for libraries and utilities."""
    host = build_host(tmp_path / "root", gpus=2, mig=True)
    spec = gpuhost.cdi_spec(host)
    assert json.loads(json.dumps(spec)) == spec
    assert (spec["cdiVersion"], spec["kind"]) == ("0.5.0", "nvidia.com/gpu")
    names = [d["name"] for d in spec["devices"]]
    mig = host.mig_devices[0]
    assert names == ["0", host.uuids[0], "1", host.uuids[1], "0:0", mig.uuid, "all"]
    nodes = {
        d["name"]: [n["path"] for n in d["containerEdits"]["deviceNodes"]] for d in spec["devices"]
    }
    assert nodes["1"] == nodes[host.uuids[1]] == ["/dev/nvidia1"]
    assert nodes["0:0"] == ["/dev/nvidia0", mig.gi_node, mig.ci_node]
    edits = spec["containerEdits"]
    assert edits["env"] == ["NVIDIA_VISIBLE_DEVICES=void"]
    assert sorted(n["path"] for n in edits["deviceNodes"]) == sorted(host.control_nodes)
    by_host = {m["hostPath"]: m for m in edits["mounts"]}
    for path in host.libraries + host.binaries:
        assert by_host[path]["containerPath"] == path
        assert by_host[path]["options"] == ["ro", "nosuid", "nodev", "bind"]
        assert host.path(path).is_file()
    for m in edits["mounts"]:
        assert host.path(m["hostPath"]).is_file(), m
    hooks = [h["args"] for h in edits["hooks"]]
    assert all(h["hookName"] == "createContainer" for h in edits["hooks"])
    assert "libcuda.so.1::/usr/lib/x86_64-linux-gnu/libcuda.so" in hooks[0]
    assert hooks[1] == ["nvidia-ctk", "hook", "update-ldcache", "--folder", gpuhost.LIBDIR]

    as_json = gpuhost.write_cdi_spec(host, "nvidia.json")
    assert as_json == host.path("/etc/cdi/nvidia.json")
    assert json.loads(as_json.read_text()) == spec
    flow = gpuhost.write_cdi_spec(host, "flow.yaml", style="flow")
    assert json.loads(flow.read_text()) == spec
    block = gpuhost.write_cdi_spec(host).read_text()
    assert block.startswith("---\ncdiVersion: ") and "\nkind: nvidia.com/gpu\n" in block


def test_synthetic_cdi_block_yaml_parses(tmp_path: Path) -> None:
    """The synthetic spec's block YAML reads back (with PyYAML) as the same data."""
    host = build_host(tmp_path / "root", mig=True)
    data = gpuhost.cdi_spec(host)
    data["containerEdits"]["env"].append("ODD=yes: no # not a comment")
    text = gpuhost.write_cdi_spec(host, data=data).read_text()
    assert yaml.safe_load(text) == data


def test_synthetic_container_cli_lists_like_the_real_one(host: GpuHost) -> None:
    """The synthetic nvidia-container-cli: ``list`` prints control nodes, GPU nodes,
    utilities, then libraries in libnvidia-container's order; options narrow it; files removed
    from the tree drop out; ``--version`` prints the banner."""
    cli = str(gpuhost.fake_container_cli(host))
    out = _run([cli, "-k", "--root=/", "list"])
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == gpuhost.container_cli_list(host)
    assert out.stdout.splitlines()[:5] == [*host.control_nodes, "/dev/nvidia0"]
    libs = [line.rsplit("/", 1)[1] for line in out.stdout.splitlines() if "/lib" in line]
    assert libs[:2] == ["libnvidia-ml.so.550.54.15", "libcuda.so.550.54.15"]
    assert not any("535.104.05" in line for line in out.stdout.splitlines())

    narrow = _run([cli, "list", "-d", f"1,{host.uuids[3]}", "--libraries"]).stdout.splitlines()
    assert narrow == [*host.control_nodes, "/dev/nvidia1", "/dev/nvidia3", *host.libraries]
    host.path("/dev/nvidia-modeset").unlink()
    host.path(host.libraries[0]).unlink()
    again = _run([cli, "list"]).stdout.splitlines()
    assert "/dev/nvidia-modeset" not in again and host.libraries[0] not in again
    assert "/dev/nvidia3" in again
    version = _run([cli, "--version"]).stdout.splitlines()
    assert version[0] == f"cli-version: {gpuhost.CONTAINER_CLI_VERSION}"
    assert version[1].startswith("lib-version: ")
    info = _run([cli, "info"]).stdout
    assert "NVRM version:   550.54.15\n" in info and f"GPU UUID:       {host.uuids[2]}\n" in info


# --------------------------------------------------------------------------------------------
# The image


def _layer_members(layer_blob: bytes) -> dict[str, tarfile.TarInfo]:
    raw = zlib.decompress(layer_blob, 31)
    with tarfile.open(fileobj=io.BytesIO(raw)) as archive:
        return {m.name: m for m in archive.getmembers()}


def test_synthetic_gpu_image_is_deterministic_glibc(tmp_path: Path) -> None:
    """The glibc image for synthetic GPU tests: the same digests on every build, the host's
    loader and libc in Debian's places, the query programs, no NVIDIA files of its own."""
    tags = gpuhost.gpu_image_tags()
    assert sorted(tags) == [
        "gpu-glibc:latest",
        "gpu-glibc:needs-cuda-12.2",
        "gpu-glibc:needs-cuda-13.1",
    ]
    rebuilt = gpuhost.build_gpu_images()
    assert {k: v.digest for k, v in tags.items()} == {k: v.digest for k, v in rebuilt.items()}
    assert gpuhost.gpu_image() is gpuhost.gpu_image_tags()["gpu-glibc:latest"]

    config = tags["gpu-glibc:needs-cuda-12.2"].config_json()["config"]
    assert config["Cmd"] == ["sh"]
    assert config["Env"] == [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "NVIDIA_REQUIRE_CUDA=cuda>=12.2 brand=tesla,driver>=470,driver<471",
    ]
    assert tags["gpu-glibc:latest"].config_json()["config"]["Env"] == [config["Env"][0]]

    members: dict[str, tarfile.TarInfo] = {}
    for layer in tags["gpu-glibc:latest"].layers:
        members.update(_layer_members(layer.blob.data))
    assert members["bin/sh"].issym() and "etc/passwd" in members
    for name in ("usr/bin/cudaquery", "usr/bin/nvmlquery", "lib/x86_64-linux-gnu/libc.so.6"):
        assert members[name].isfile() and members[name].mode == 0o755, name
    interp = members["lib64/ld-linux-x86-64.so.2"]
    target = interp.linkname.lstrip("/") if interp.issym() else interp.name
    assert members[target].isfile()
    assert members["usr/local"].isdir()
    assert not any("nvidia" in name or "libcuda" in name for name in members)
