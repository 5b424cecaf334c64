"""Selection rules, bindings, the image's requirements and InfiniBand, on synthetic hosts
(trees standing for a GPU node and HCAs: no real device is involved)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
from hosts import DRIVER, UUIDS, gpu_host, hca_host, within

from ucore.values.errors import DeviceError, UsageError
from ucore.values.model import DeviceRequest
from ucore_gpu import bind, infiniband, require, scan
from ucore_gpu.plugin import _Gpus
from ucore_gpu.selection import select


def gpus_of(
    tmp_path: Path, selection: str, environ: dict[str, str] | None = None, origin: str = "--gpus"
) -> list[str]:
    inv = scan.scan(gpu_host(tmp_path))
    chosen, _ = select(inv, [DeviceRequest("nvidia.com/gpu", selection, origin)], environ or {})
    return [g.uuid for g in chosen]


@pytest.mark.parametrize(
    ("selection", "expected"),
    [
        ("all", UUIDS),
        ("count=2", UUIDS[:2]),
        ("1,3", [UUIDS[1], UUIDS[3]]),
        ("3,1", [UUIDS[1], UUIDS[3]]),
        (UUIDS[2], [UUIDS[2]]),
        (UUIDS[2][:12], [UUIDS[2]]),
        ("none", []),
    ],
)
def test_explicit_selections(tmp_path: Path, selection: str, expected: list[str]) -> None:
    assert gpus_of(tmp_path, selection) == expected


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"SLURM_STEP_GPUS": "2", "SLURM_JOB_GPUS": "0,1", "CUDA_VISIBLE_DEVICES": "0"}, [2]),
        ({"SLURM_JOB_GPUS": "0,1", "CUDA_VISIBLE_DEVICES": "3"}, [0, 1]),
        ({"CUDA_VISIBLE_DEVICES": UUIDS[3]}, [3]),
        ({"GPU_DEVICE_ORDINAL": "1"}, [1]),
        ({}, [0, 1, 2, 3]),
        ({"CUDA_VISIBLE_DEVICES": ""}, []),
        ({"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, []),
        ({"CUDA_VISIBLE_DEVICES": "-1"}, []),  # CUDA's way to hide every GPU
        ({"CUDA_VISIBLE_DEVICES": "2,-1,0"}, [2]),  # CUDA stops at the first bad entry
        ({"CUDA_VISIBLE_DEVICES": "1,,3"}, [1]),
    ],
)
def test_default_request_takes_the_jobs_allocation(
    tmp_path: Path, environ: dict[str, str], expected: list[int]
) -> None:
    assert gpus_of(tmp_path, "", environ) == [UUIDS[i] for i in expected]


def test_explicit_selection_wins_over_the_allocation(tmp_path: Path) -> None:
    assert gpus_of(tmp_path, "0", {"SLURM_STEP_GPUS": "2"}) == [UUIDS[0]]


@pytest.mark.parametrize(
    ("selection", "error", "words"),
    [
        ("7", DeviceError, "no GPU 7 on this host (GPUs 0-3)"),
        ("GPU-ffff", DeviceError, "no GPU with UUID GPU-ffff"),
        ("GPU-", UsageError, "the start of several"),
        ("count=9", DeviceError, "more GPUs asked than this host has (4)"),
        ("count=" + "9" * 5000, DeviceError, "more GPUs asked than this host has (4)"),
        ("count=x", UsageError, "expected a number"),
        ("count=\u00b2", UsageError, "expected a number"),
        ("9" * 5000, DeviceError, "no GPU"),
        ("\u00b2", UsageError, "not a GPU index"),
        ("0,,1", UsageError, "empty entry"),
        ("fast", UsageError, "not a GPU index"),
    ],
)
def test_bad_selections(tmp_path: Path, selection: str, error: type, words: str) -> None:
    with pytest.raises(error) as err:
        gpus_of(tmp_path, selection, origin=f"--gpus device={selection}")
    assert words in str(err.value) and str(err.value).startswith("--gpus device=")


def test_a_host_without_gpus(tmp_path: Path) -> None:
    inv = scan.scan(gpu_host(tmp_path / "h", gpus=0)._replace(root=str(tmp_path / "none")))
    with pytest.raises(DeviceError, match="no NVIDIA GPU on this host"):
        select(inv, [DeviceRequest("nvidia.com/gpu", "all", "--gpus all")], {})


@pytest.mark.parametrize(
    ("flag", "selection"),
    [
        ("all", "all"),
        ("2", "count=2"),
        ("device=0,2", "0,2"),
        ('"device=1"', "1"),
        ("none", "none"),
        (f"device={UUIDS[0]}", UUIDS[0]),
        ("9" * 5000, f"count={'9' * 5000}"),
    ],
)
def test_gpus_flag_spellings(flag: str, selection: str) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", action="append", default=[])
    parser.add_argument("--gpus", action=_Gpus)
    args = parser.parse_args(["--device", "/dev/fuse", "--gpus", "all", "--gpus", flag])
    assert args.device == [
        "/dev/fuse",
        DeviceRequest("nvidia.com/gpu", selection, f"--gpus {flag}"),
    ]


@pytest.mark.parametrize("flag", ["0", "000", "many", "device=", "device=0 1", "\u00b2"])
def test_gpus_flag_refuses(flag: str) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gpus", action=_Gpus)
    with pytest.raises(SystemExit):
        parser.parse_args(["--gpus", flag])


def test_bindings(tmp_path: Path) -> None:
    settings = gpu_host(tmp_path)
    inv = scan.scan(settings)
    chosen, _ = select(inv, [DeviceRequest("nvidia.com/gpu", "1,3")], {})
    out = bind.bindings(
        settings,
        inv,
        chosen,
        {"LD_LIBRARY_PATH": "/opt/lib:/usr/local/nvidia/lib64", "PATH": "/bin"},
    )
    assert [d.target for d in out["devices"]] == [
        "/dev/nvidiactl",
        "/dev/nvidia-uvm",
        "/dev/nvidia-uvm-tools",
        "/dev/nvidia1",
        "/dev/nvidia3",
    ]
    assert all(d.path == str(tmp_path) + d.target for d in out["devices"])
    targets = {m.target: m for m in out["mounts"]}
    lib = "/usr/local/nvidia/lib64"
    # the file name, the soname the file declares (the sample library's), the dev name
    for name in (f"libcuda.so.{DRIVER}", "libz.so.1", "libcuda.so", f"libnvidia-ml.so.{DRIVER}"):
        assert f"{lib}/{name}" in targets, sorted(targets)
    assert all(m.readonly and m.transient for m in out["mounts"])
    assert targets["/usr/local/nvidia/bin/nvidia-smi"].source == str(
        tmp_path / "usr/bin/nvidia-smi"
    )
    assert targets["/usr/local/nvidia/etc/OpenCL/vendors/nvidia.icd"]
    env = out["env"]
    assert env["LD_LIBRARY_PATH"] == f"{lib}:/opt/lib"
    assert env["PATH"] == "/bin:/usr/local/nvidia/bin"
    assert env["CUDA_VISIBLE_DEVICES"] == env["NVIDIA_VISIBLE_DEVICES"] == f"{UUIDS[1]},{UUIDS[3]}"
    assert env["OCL_ICD_VENDORS"] == "/usr/local/nvidia/etc/OpenCL/vendors"


def test_bindings_without_uuids_use_pci_ordered_indices(tmp_path: Path) -> None:
    settings = gpu_host(tmp_path, procfs=False)
    inv = scan.scan(settings)
    chosen, _ = select(inv, [DeviceRequest("nvidia.com/gpu", "2")], {})
    env = bind.bindings(settings, inv, chosen, {})["env"]
    assert (env["CUDA_VISIBLE_DEVICES"], env["CUDA_DEVICE_ORDER"]) == ("2", "PCI_BUS_ID")


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("cuda>=12.2 brand=tesla,driver>=470,driver<471", True),
        ("cuda>=12.4", True),
        ("cuda>=13.1", False),
        ("cuda>=13.1 brand=tesla,driver>=470,driver<471", False),  # brand is unknown here
        ("cuda>=13.1 driver>=550", True),
        ("driver>=560", False),
        ("arch>=8.0", False),
        ("cuda>=x", False),
    ],
)
def test_require_cuda(value: str, ok: bool) -> None:
    env = {"NVIDIA_REQUIRE_CUDA": value}
    if ok:
        require.check(env, DRIVER, lambda: (12, 4))
    else:
        with pytest.raises(
            DeviceError,
            match=f"needs NVIDIA_REQUIRE_CUDA={value}; this host's"
            f" driver {DRIVER} offers CUDA 12.4",
        ):
            require.check(env, DRIVER, lambda: (12, 4))


def test_require_disabled_and_absent() -> None:
    never = lambda: pytest.fail("the CUDA version was asked for no reason")  # noqa: E731
    require.check({}, DRIVER, never)
    require.check(
        {"NVIDIA_REQUIRE_CUDA": "cuda>=99", "NVIDIA_DISABLE_REQUIRE": "true"}, DRIVER, never
    )


def test_require_with_an_unreadable_cuda_version() -> None:
    with pytest.raises(DeviceError, match="offers an unknown CUDA version"):
        require.check({"NVIDIA_REQUIRE_CUDA": "cuda>=11.0"}, DRIVER, lambda: None)


# --- InfiniBand ----------------------------------------------------------------------------


def hca_names(tmp_path: Path, selection: str, environ: dict[str, str] | None = None) -> list[str]:
    found = infiniband.hcas(hca_host(tmp_path))
    request = DeviceRequest("infiniband", selection, "--device infiniband")
    return [h.name for h in infiniband.select(found, [request], environ or {})[0]]


def test_hcas_are_found_with_pci_addresses_and_nodes(tmp_path: Path) -> None:
    found = infiniband.hcas(hca_host(tmp_path))
    assert [(h.name, h.pci, h.nodes) for h in found] == [
        ("mlx5_0", "0000:3b:00.0", ("/dev/infiniband/uverbs0", "/dev/infiniband/umad0")),
        ("mlx5_1", "0000:3b:00.2", ("/dev/infiniband/uverbs1", "/dev/infiniband/umad1")),
    ]


def test_an_ibdev_fifo_is_not_waited_on(tmp_path: Path) -> None:
    """A FIFO without a writer blocks an ordinary open for ever: it names no HCA."""
    settings = hca_host(tmp_path)
    ibdev = tmp_path / "sys/class/infiniband_verbs/uverbs0/ibdev"
    ibdev.unlink()
    os.mkfifo(ibdev)
    with within(10):
        assert infiniband.hcas(settings)[0].nodes == ("/dev/infiniband/umad0",)


@pytest.mark.parametrize(
    ("selection", "environ", "expected"),
    [
        ("all", {}, ["mlx5_0", "mlx5_1"]),
        ("mlx5_1", {}, ["mlx5_1"]),
        ("0000:3b:00.2", {}, ["mlx5_1"]),
        ("3b:00.0", {}, ["mlx5_0"]),
        ("", {"UCX_NET_DEVICES": "mlx5_1:1"}, ["mlx5_1"]),
        ("", {"NCCL_IB_HCA": "=mlx5_0"}, ["mlx5_0"]),
        ("", {}, ["mlx5_0", "mlx5_1"]),
        ("none", {}, []),
    ],
)
def test_hca_selection(
    tmp_path: Path, selection: str, environ: dict[str, str], expected: list[str]
) -> None:
    assert hca_names(tmp_path, selection, environ) == expected


def test_unknown_hca(tmp_path: Path) -> None:
    with pytest.raises(DeviceError, match=r"no HCA mlx5_9 on this host \(it has mlx5_0"):
        hca_names(tmp_path, "mlx5_9")


def test_no_hca_on_this_host(tmp_path: Path) -> None:
    with pytest.raises(DeviceError, match="no InfiniBand HCA on this host"):
        infiniband.select([], [DeviceRequest("infiniband", "all", "--device infiniband")], {})


def test_hca_bindings(tmp_path: Path) -> None:
    settings = hca_host(tmp_path)

    class Session:
        class config:
            options = argparse.Namespace()

            @staticmethod
            def section(name: str) -> dict[str, str]:
                return {"device_root": str(tmp_path)}

    provider = infiniband.InfiniBand(Session())  # type: ignore[arg-type]
    assert provider.settings == settings
    chosen = [h for h in provider.found if h.name == "mlx5_1"]
    out = provider.bindings(chosen, {}, [])
    assert [d.target for d in out["devices"]] == [
        "/dev/infiniband/uverbs1",
        "/dev/infiniband/umad1",
        "/dev/infiniband/rdma_cm",
    ]
    assert os.path.exists(out["devices"][0].path)
    assert out["env"] == {
        "UCX_NET_DEVICES": "mlx5_1:1",
        "OMPI_MCA_btl_openib_if_include": "mlx5_1",
        "NCCL_IB_HCA": "=mlx5_1",
    }


def test_spec_files_are_read_only_but_daemon_sockets(tmp_path: Path) -> None:
    """A file a spec binds cannot be written from the container (root in it could otherwise
    change the host's file); a daemon's socket can."""
    import socket

    from ucore_gpu.inventory import Extra

    settings = gpu_host(tmp_path)
    (tmp_path / "run/nvidia-persistenced").mkdir(parents=True)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "run/nvidia-persistenced/socket"))
    try:
        inv = scan.scan(settings)._replace(
            extras=(
                Extra("/run/nvidia-persistenced/socket", "/run/nvidia-persistenced/socket"),
                Extra("/usr/bin/nvidia-smi", "/etc/nvidia-smi"),
            )
        )
        out = bind.bindings(settings, inv, inv.gpus[:1], {})
    finally:
        sock.close()
    modes = {m.target: m.readonly for m in out["mounts"]}
    assert modes["/run/nvidia-persistenced/socket"] is False
    assert modes["/etc/nvidia-smi"] is True


def test_none_wins_over_any_other_request(tmp_path: Path) -> None:
    inv = scan.scan(gpu_host(tmp_path))
    for order in (
        (("all", "--device nvidia.com/gpu=all"), ("none", "--gpus none")),
        (("none", "--gpus none"), ("0", "--device nvidia.com/gpu=0")),
    ):
        requests = [DeviceRequest("nvidia.com/gpu", sel, origin) for sel, origin in order]
        chosen, how = select(inv, requests, {})
        assert (chosen, how) == ([], "--gpus none")
