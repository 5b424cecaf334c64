"""ucore-gpu end to end, on a synthetic GPU and InfiniBand host, in every engine.

No GPU or HCA exists here: ``support.gpuhost`` lays out a host whose driver libraries are
compiled by the tests with the host's C compiler (a ``libcuda.so.1`` and a
``libnvidia-ml.so.1`` that count the ``/dev/nvidiaN`` files they can open, honouring
``CUDA_VISIBLE_DEVICES``), and ``UCORE_DEVICE_ROOT`` points discovery at it. Everything else is
real: the image comes from the local registry, the engines are the real proot, runc and crun,
and ``cudaquery`` in the image loads ``libcuda.so.1`` through the normal library path. CI runs
this as root and again as the unprivileged user.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from support import gpuhost
from support.cli import (
    Ucore,
    assert_error_line,
    describe,
    engine_container,
    installed_engines,
    json_events,
    usable_engine,
)

from ucore.testing.push import Pusher
from ucore.testing.registry import RegistryServer

ENGINES = ("proot", "runc", "crun")
#: Engines that give the container a /dev of its own (only the bound nodes are there).
HIDING = ("runc", "crun")


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> gpuhost.GpuHost:
    return gpuhost.build_host(tmp_path_factory.mktemp("gpuhost"))


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory, host: gpuhost.GpuHost) -> Ucore:
    ucore = Ucore(tmp_path_factory.mktemp("gpu"))
    ucore.env["UCORE_DEVICE_ROOT"] = str(host.root)
    return ucore


@pytest.fixture(scope="module")
def images(cli: Ucore, registry: RegistryServer) -> dict[str, str]:
    pusher = Pusher(registry.url)
    refs = {}
    for reference, image in gpuhost.gpu_image_tags().items():
        pusher.push(reference, image)
        refs[reference.split(":")[1]] = f"{registry.address}/{reference}"
        cli.ok("pull", refs[reference.split(":")[1]])
    return refs


@pytest.fixture(scope="module")
def installed(cli: Ucore) -> dict[str, dict[str, Any]]:
    return installed_engines(cli)


@pytest.fixture(scope="module", params=ENGINES)
def engine(request: pytest.FixtureRequest, installed: dict[str, dict[str, Any]]) -> str:
    return usable_engine(installed, request.param)


@pytest.fixture(scope="module")
def container(cli: Ucore, images: dict[str, str], engine: str) -> str:
    return engine_container(cli, images["latest"], engine, "gpu")


def root_of(cli: Ucore, container: str) -> Path:
    return Path(cli.ok("inspect", "-p", container).stdout.strip())


def snapshot(top: Path) -> dict[str, tuple[object, ...]]:
    """Every entry's type, mode, owner, size, link target and content digest."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = os.lstat(path)
            digest = None
            if stat.S_ISREG(st.st_mode):
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            link = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
            out[str(path.relative_to(top))] = (
                stat.S_IFMT(st.st_mode), st.st_mode, st.st_uid, st.st_gid, st.st_size, link,
                digest,
            )  # fmt: skip
    return out


def devices_of(cli: Ucore, container: str, *opts: str, env: dict[str, str] | None = None) -> str:
    result = cli.run("run", *opts, container, "cudaquery", env=env)
    assert result.returncode == 0, describe(result)
    return result.stdout.splitlines()[0]


# --- GPUs ----------------------------------------------------------------------------------


def test_all_gpus_through_the_normal_library_path(
    cli: Ucore, container: str, host: gpuhost.GpuHost
) -> None:
    out = cli.ok("run", "--gpus", "all", container, "cudaquery").stdout
    # the running driver's libcuda (the stale one left in /usr/lib64 would say 99 devices)
    assert out == f"devices: 4\ncuda: {host.cuda}\n"
    out = cli.ok("run", "--gpus", "all", container, "nvmlquery").stdout
    assert out == f"driver: {host.driver}\ndevices: 4\n"


def test_selected_gpus_only(cli: Ucore, container: str, engine: str, host: gpuhost.GpuHost) -> None:
    assert devices_of(cli, container, "--gpus", "device=1,3") == "devices: 2"
    script = "cat /dev/nvidia[0-9]*; echo $NVIDIA_VISIBLE_DEVICES; echo $CUDA_VISIBLE_DEVICES"
    out = cli.ok("run", "--gpus", "device=1,3", container, "sh", "-c", script).stdout.split()
    chosen = f"{host.uuids[1]},{host.uuids[3]}"
    assert out[-2:] == [chosen, chosen]
    if engine in HIDING:  # its own /dev: the other GPUs' nodes are not there at all
        assert out[:-2] == [host.uuids[1], host.uuids[3]]


def test_by_uuid_and_by_cdi_spelling(cli: Ucore, container: str, host: gpuhost.GpuHost) -> None:
    assert devices_of(cli, container, "--gpus", f"device={host.uuids[2]}") == "devices: 1"
    assert devices_of(cli, container, "--device", "nvidia.com/gpu=0") == "devices: 1"
    assert devices_of(cli, container, "--gpus", "2") == "devices: 2"


def test_no_gpus_means_no_library(cli: Ucore, container: str) -> None:
    for opts in ([], ["--gpus", "none"]):
        result = cli.run("run", *opts, container, "cudaquery")
        assert result.returncode == 3, describe(result)
        assert "libcuda.so.1: cannot open shared object file" in result.stderr


def test_utilities_on_the_path(cli: Ucore, container: str) -> None:
    out = cli.ok("run", "--gpus", "device=0,2", container, "nvidia-smi", "-L").stdout
    assert [line.split(":")[0] for line in out.splitlines()] == ["GPU 0", "GPU 1"]


def test_the_image_is_unchanged(cli: Ucore, container: str) -> None:
    root = root_of(cli, container)
    cli.ok("run", container, "true")  # the first run's own files (name resolution) exist
    before = snapshot(root.parent)
    cli.ok("run", "--gpus", "all", "--device", "infiniband", container, "cudaquery")
    after = snapshot(root.parent)
    after.pop("devices.json")
    before.pop("devices.json", None)
    assert after == before
    assert not (root / "usr/local/nvidia").exists()


@pytest.mark.parametrize(
    "case",
    [
        (
            lambda r: (r / "usr/local/nvidia").write_text("x"),
            "/usr/local/nvidia is not a directory",
        ),
        (
            lambda r: (r / "usr/local/nvidia/lib64/libcuda.so.1").mkdir(parents=True),
            "on /usr/local/nvidia/lib64/libcuda.so.1: in the image it is a directory",
        ),
        (
            lambda r: (
                (r / "usr/local/nvidia").mkdir(),
                (r / "usr/local/nvidia/bin").symlink_to("/bin/sh"),
            ),
            "in the image /bin/busybox is not a directory",
        ),
    ],
    ids=["nvidia-a-file", "library-a-directory", "bin-a-link-to-a-file"],
)
def test_an_image_in_the_way_of_the_bindings(
    cli: Ucore,
    images: dict[str, str],
    engine: str,
    case: tuple[Any, str],
    request: pytest.FixtureRequest,
) -> None:
    """Where the image has a file for a directory the libraries need, or a directory for a
    library, every engine refuses alike (runc and crun printed two lines of their own and
    exit 8; PRoot ran the command without the libraries)."""
    lay_out, words = case
    name = f"in-the-way-{request.node.callspec.id}"
    cli.ok("create", "--name", name, images["latest"])
    cli.ok("setup", "--engine", engine, name)
    root = root_of(cli, name)
    lay_out(root)
    before = snapshot(root)
    result = cli.run("run", "--gpus", "all", name, "cudaquery")
    assert result.returncode == 6, describe(result)
    assert words in assert_error_line(result)
    assert snapshot(root) == before


def test_setup_nvidia_binds_the_jobs_allocation_at_every_run(
    cli: Ucore, container: str, host: gpuhost.GpuHost
) -> None:
    cli.ok("setup", "--nvidia", container)
    try:
        assert "device nvidia.com/gpu" in cli.ok("setup", container).stdout
        assert devices_of(cli, container) == "devices: 4"
        assert devices_of(cli, container, env={"SLURM_STEP_GPUS": "1,2"}) == "devices: 2"
        assert devices_of(cli, container, env={"CUDA_VISIBLE_DEVICES": host.uuids[0]}) == (
            "devices: 1"
        )
        assert devices_of(cli, container, "--gpus", "device=3") == "devices: 1"
        result = cli.run("run", "--gpus", "none", container, "cudaquery")
        assert result.returncode == 3, describe(result)
    finally:
        cli.ok("setup", "--nodevice", container)
    assert cli.run("run", container, "cudaquery").returncode == 3


def test_the_runs_record(cli: Ucore, container: str, host: gpuhost.GpuHost) -> None:
    result = cli.run("--log-format", "json", "run", "--gpus", "device=1", container, "true")
    assert result.returncode == 0, describe(result)
    events = [e for e in json_events(result.stderr) if e["event"] == "run.devices"]
    assert events and events[0]["report"]["driver"] == host.driver
    assert events[0]["report"]["gpus"] == [host.uuids[1]]
    record = json.loads((root_of(cli, container).parent / "devices.json").read_text())
    assert record["nvidia.com/gpu"]["devices"][-1] == "/dev/nvidia1"
    assert f"libcuda.so.{host.driver}" in record["nvidia.com/gpu"]["libraries"]


# --- the image's requirements ----------------------------------------------------------------


def test_nvidia_require_cuda(cli: Ucore, images: dict[str, str], engine: str) -> None:
    ok = engine_container(cli, images["needs-cuda-12.2"], engine, "needs122")
    assert devices_of(cli, ok, "--gpus", "all") == "devices: 4"
    newer = engine_container(cli, images["needs-cuda-13.1"], engine, "needs131")
    result = cli.run("run", "--gpus", "all", newer, "cudaquery")
    assert result.returncode == 9, describe(result)
    line = assert_error_line(result)
    assert "NVIDIA_REQUIRE_CUDA=cuda>=13.1" in line and "offers CUDA 12.4" in line
    assert result.stdout == ""
    assert devices_of(cli, newer, "--gpus", "all", "--no-require-cuda") == "devices: 4"


# --- InfiniBand ------------------------------------------------------------------------------


def test_infiniband_by_name_and_pci_address(cli: Ucore, container: str, engine: str) -> None:
    script = (
        "ls /dev/infiniband; echo $UCX_NET_DEVICES $OMPI_MCA_btl_openib_if_include $NCCL_IB_HCA"
    )
    for which in ("mlx5_1", "0000:3b:00.2"):
        out = cli.ok("run", "--device", f"infiniband={which}", container, "sh", "-c", script)
        lines = out.stdout.split()
        assert lines[-3:] == ["mlx5_1:1", "mlx5_1", "=mlx5_1"]
        assert sorted(lines[:-3]) == ["rdma_cm", "umad1", "uverbs1"]


def test_infiniband_from_the_jobs_environment(cli: Ucore, container: str) -> None:
    out = cli.ok(
        "run", "--device", "infiniband", container, "sh", "-c", "ls /dev/infiniband",
        env={"UCX_NET_DEVICES": "mlx5_0:1"},
    ).stdout.split()  # fmt: skip
    assert sorted(out) == ["rdma_cm", "umad0", "uverbs0"]


# --- other sources, reports and refusals (one engine is enough: nothing is started) ----------


def test_cdi_spec_is_the_first_source(
    tmp_path: Path, images: dict[str, str], host: gpuhost.GpuHost, registry: RegistryServer
) -> None:
    own = gpuhost.build_host(tmp_path / "host", gpus=2)
    gpuhost.write_cdi_spec(own, "nvidia.json")
    cli = Ucore(tmp_path)
    cli.env["UCORE_DEVICE_ROOT"] = str(own.root)
    report = json.loads(cli.ok("info", "--devices", "--json").stdout)
    gpu = next(p for p in report["providers"] if p["kind"] == "nvidia.com/gpu")
    assert gpu["chosen"] == "cdi /etc/cdi/nvidia.json"
    assert [g["uuid"] for g in gpu["gpus"] if g["index"] >= 0] == own.uuids
    name = engine_container(cli, images["latest"], "proot", "cdi")
    assert devices_of(cli, name, "--gpus", "all") == "devices: 2"


def test_info_devices_reports_sources_and_engines(cli: Ucore, host: gpuhost.GpuHost) -> None:
    out = cli.ok("info", "--devices", "--gpus", "device=1").stdout
    assert "source cdi: no spec of kind nvidia.com/gpu" in out
    assert f"source scan: driver {host.driver}, 4 GPUs" in out
    assert f"NVIDIA_VISIBLE_DEVICES={host.uuids[1]}" in out
    assert "HCA mlx5_1: PCI 0000:3b:00.2" in out
    data = json.loads(cli.ok("info", "--devices", "--json").stdout)
    hiding = {e["name"]: e["hides_devices"] for e in data["engines"]}
    assert hiding["runc"] and hiding["crun"] and not hiding["proot"]


@pytest.mark.parametrize(
    ("opts", "words"),
    [
        (["--gpus", "device=7"], "no GPU 7 on this host (GPUs 0-3)"),
        (["--gpus", "device=GPU-00000000-dead"], "no GPU with UUID GPU-00000000-dead"),
        (["--device", "infiniband=mlx5_9"], "no HCA mlx5_9 on this host"),
        (["--device", "nvidia.com/gpu=0", "--device", "infiniband=ff:00.0"], "no HCA ff:00.0"),
    ],
)
def test_a_device_the_host_lacks(cli: Ucore, container: str, opts: list[str], words: str) -> None:
    result = cli.run("run", *opts, container, "sh", "-c", "echo started")
    assert result.returncode == 9, describe(result)
    assert words in assert_error_line(result)
    assert "started" not in result.stdout


def test_a_host_without_gpus_or_hcas(tmp_path: Path, images: dict[str, str]) -> None:
    cli = Ucore(tmp_path)
    (tmp_path / "bare").mkdir()
    cli.env["UCORE_DEVICE_ROOT"] = str(tmp_path / "bare")
    name = engine_container(cli, images["latest"], "proot", "bare")
    for opts, words in (
        (["--gpus", "all"], "--gpus all: no NVIDIA GPU on this host (no NVIDIA kernel driver"),
        (["--device", "infiniband"], "no InfiniBand HCA on this host"),
    ):
        result = cli.run("run", *opts, name, "true")
        assert result.returncode == 9, describe(result)
        assert words in assert_error_line(result)


def test_a_malformed_cdi_spec(tmp_path: Path, images: dict[str, str]) -> None:
    own = gpuhost.build_host(tmp_path / "host", gpus=1)
    (own.root / "etc/cdi").mkdir(parents=True, exist_ok=True)
    (own.root / "etc/cdi/nvidia.yaml").write_text(
        "cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices: [\n"
    )
    cli = Ucore(tmp_path)
    cli.env["UCORE_DEVICE_ROOT"] = str(own.root)
    name = engine_container(cli, images["latest"], "proot", "bad")
    result = cli.run("run", "--gpus", "all", name, "true")
    assert result.returncode == 9, describe(result)
    assert "CDI spec /etc/cdi/nvidia.yaml: not valid YAML or JSON" in assert_error_line(result)
    report = cli.ok("info", "--devices").stdout  # explains it, and still reports the rest
    assert "discovery failed: CDI spec /etc/cdi/nvidia.yaml: not valid YAML or JSON" in report
    assert "infiniband (ucore-gpu):" in report


@pytest.mark.parametrize(
    ("opts", "status", "words"),
    [
        (["--gpus", "many"], 2, "--gpus many: expected all, none, N or device=LIST"),
        (["--device", "nvidia.com/gpu="], 2, "nothing after '='"),
        (["--device", "acme.com/fpga=0"], 2, "no device provider for kind 'acme.com/fpga'"),
    ],
)
def test_bad_requests_are_usage_errors(
    cli: Ucore, container: str, opts: list[str], status: int, words: str
) -> None:
    result = cli.run("run", *opts, container, "true")
    assert result.returncode == status, describe(result)
    assert words in assert_error_line(result)


def test_mig_instances(tmp_path: Path, images: dict[str, str]) -> None:
    """By MIG UUID from a CDI spec (which names them), and as GPU:GI:CI from the driver's
    capability files (which do not know their UUIDs); each brings its capability nodes."""
    own = gpuhost.build_host(tmp_path / "host", gpus=2, mig=True)
    mig = own.mig_devices[0]
    cli = Ucore(tmp_path)
    cli.env["UCORE_DEVICE_ROOT"] = str(own.root)

    def would_bind(selection: str) -> dict[str, Any]:
        out = cli.ok("info", "--devices", "--json", "--gpus", f"device={selection}").stdout
        gpu = next(p for p in json.loads(out)["providers"] if p["kind"] == "nvidia.com/gpu")
        assert "request_error" not in gpu, gpu["request_error"]
        return dict(gpu["would_bind"])

    scanned = would_bind(f"{mig.gpu}:{mig.gi}:{mig.ci}")
    assert {mig.gi_node, mig.ci_node, "/dev/nvidia0"} <= set(scanned["devices"])
    assert "/dev/nvidia1" not in scanned["devices"]
    assert scanned["env"]["CUDA_VISIBLE_DEVICES"] == own.uuids[mig.gpu]  # the instance's GPU
    gpuhost.write_cdi_spec(own, "nvidia.json")
    named = would_bind(mig.uuid)
    assert {mig.gi_node, mig.ci_node} <= set(named["devices"])
    assert named["env"]["CUDA_VISIBLE_DEVICES"] == mig.uuid


def test_infiniband_libs_for_images_without_rdma_core(cli: Ucore, container: str) -> None:
    script = (
        "ls /usr/local/ucore-rdma/lib; cat /etc/libibverbs.d/mlx5.driver; echo $LD_LIBRARY_PATH"
    )
    out = cli.ok(
        "run", "--device", "infiniband=mlx5_0", "--infiniband-libs", container, "sh", "-c", script
    ).stdout.split()  # fmt: skip
    assert {"libibverbs.so.1", "libmlx5-rdmav34.so"} <= set(out)
    assert out[-3:] == ["driver", "mlx5", "/usr/local/ucore-rdma/lib"]


@pytest.mark.parametrize("recorded", [["!!!"], ["nvidia.com/gpu="], [7], "nvidia.com/gpu"])
def test_a_damaged_device_record(cli: Ucore, images: dict[str, str], recorded: object) -> None:
    """A container record edited by hand is a damaged record (exit 7), never a crash or a
    usage error: a bad request ``setup --nodevice`` forgets, a field of the wrong type (as
    for every field of the record) ``rm -f`` removes."""
    name = f"damaged-{abs(hash(repr(recorded)))}"
    cli.ok("create", "--name", name, images["latest"])
    meta = root_of(cli, name).parent / "container.json"
    data = json.loads(meta.read_text())
    data["devices"] = recorded
    meta.write_text(json.dumps(data))
    result = cli.run("run", name, "true")
    assert result.returncode == 7, describe(result)
    assert_error_line(result)
    if all(isinstance(r, str) for r in recorded) and isinstance(recorded, list):
        assert "'ucore setup --nodevice' forgets them" in result.stderr
        cli.ok("setup", "--nodevice", name)
        cli.ok("run", name, "true")
    else:
        cli.ok("rm", "-f", name)
