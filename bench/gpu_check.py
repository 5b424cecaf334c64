#!/usr/bin/env python3
"""The GPU check of ``bench/gpu-check.sh``: ucore-gpu on a real NVIDIA GPU, in every engine.

``prepare`` (on a machine with the package registries: the checkout's wheels and their
dependencies, and a glibc image whose ``cudaquery`` loads ``libcuda.so.1``, calls ``cuInit``
and lists each device's name, compute capability and memory) writes everything to ``--out``.
``run`` (on the GPU machine, no network) loads the image from that tarball into a fresh store
and, in each usable engine, runs ``nvidia-smi -L`` and ``cudaquery`` with ``--gpus all``, then
``cudaquery`` with ``--gpus device=0`` (one device) and ``--gpus none`` (the library must not
be found), and prints a table. ``run --synthetic`` does the same against the tests' synthetic
host (``tests/support/gpuhost.py``), so the script itself is checked on machines without a GPU.
Exit status 0 only when every check passed.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Optional

import _common

HERE = Path(__file__).resolve().parent
CHECKOUT = HERE.parent
IMAGE_TAR = "cudaquery-image.tar"
TAG = "gpu-check/cudaquery:latest"
#: Each command's limit: the whole check must end in under five minutes.
COMMAND_TIMEOUT = 60.0
DISTRIBUTIONS = ("core", "plugins/proot", "plugins/runc", "plugins/gpu")


def _support() -> object:
    sys.path.insert(0, str(CHECKOUT / "tests"))
    sys.path.insert(0, str(CHECKOUT / "core" / "src"))
    from support import gpuhost

    return gpuhost


def prepare(out: Path) -> None:
    """The image tarball (an OCI layout) and a wheelhouse for an offline install."""
    gpuhost = _support()
    out.mkdir(parents=True, exist_ok=True)
    image = gpuhost.gpu_image()  # type: ignore[attr-defined]
    write_layout(image, out / IMAGE_TAR)
    wheels = out / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "-w", str(wheels)]
    with tempfile.TemporaryDirectory(prefix="ucore-gpu-check-src-") as tmp:
        dists = [CHECKOUT / d for d in DISTRIBUTIONS]
        subprocess.run([*pip, *_common.source_copies(Path(tmp), dists)], check=True)
    # The GPU machine's Python may be another version: the compiled dependencies for each.
    compiled = sorted(p.name.split("-")[0] for p in wheels.glob("*-cp3*.whl"))
    for version in ("3.9", "3.10", "3.11", "3.12", "3.13"):
        download = [sys.executable, "-m", "pip", "download", "-q", "-d", str(wheels)]
        download += ["--only-binary=:all:", "--no-deps", "--python-version", version]
        download += ["--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_28_x86_64"]
        subprocess.run([*download, *compiled], check=False)
    print(f"wrote {out / IMAGE_TAR} ({image.digest}) and {len(list(wheels.iterdir()))} wheels")


def write_layout(image: object, path: Path) -> None:
    """An OCI image layout tarball, which ``ucore load`` reads."""
    blobs = [image.manifest, *image.blobs]  # type: ignore[attr-defined]
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                **image.manifest.descriptor(),
                "annotations": {  # type: ignore[attr-defined]
                    "org.opencontainers.image.ref.name": TAG
                },
            }
        ],
    }
    with tarfile.open(path, "w") as tar:
        for name, data in (
            ("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode()),
            ("index.json", json.dumps(index).encode()),
            *((f"blobs/sha256/{hashlib.sha256(b.data).hexdigest()}", b.data) for b in blobs),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


class Checker:
    def __init__(self, store: Path, env: dict[str, str]) -> None:
        self.env = {**os.environ, **env, "UCORE_DIR": str(store)}
        self.rows: list[tuple[str, str, bool, float, str]] = []

    def ucore(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ucore", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def check(self, engine: str, what: str, args: list[str], expect: str, status: int = 0) -> None:
        started = time.monotonic()
        done = self.ucore("run", *args)
        seconds = time.monotonic() - started
        text = (done.stdout + done.stderr).strip()
        ok = done.returncode == status and expect in text
        self.rows.append((engine, what, ok, seconds, text.replace("\n", " | ")[:160]))
        print(f"[{'ok' if ok else 'FAIL'}] {engine:<16} {what:<28} {seconds:5.2f} s  {text}")


def run(out: Path, synthetic: bool) -> int:
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="ucore-gpu-check-"))
    try:
        env: dict[str, str] = {}
        if synthetic:
            host = _support().build_host(work / "host")  # type: ignore[attr-defined]
            env["UCORE_DEVICE_ROOT"] = str(host.root)
        checker = Checker(work / "store", env)
        loaded = checker.ucore("load", "-i", str(out / IMAGE_TAR))
        if loaded.returncode != 0:
            print(f"ucore load failed: {loaded.stderr.strip()}")
            return 1
        print(checker.ucore("info", "--devices", "--gpus", "all").stdout)
        info = json.loads(checker.ucore("info", "--json").stdout)
        engines = [e["name"] for e in info["engines"] if e["usable"]]
        skipped = [f"{e['name']} ({e['reason']})" for e in info["engines"] if not e["usable"]]
        if skipped:
            print("engines not usable here: " + "; ".join(skipped))
        count = _count(checker)
        for engine in engines:
            name = f"gc-{engine}"
            made = checker.ucore("create", "--name", name, TAG)
            setup = checker.ucore("setup", "--engine", engine, name)
            if made.returncode or setup.returncode:
                print(f"[FAIL] {engine}: {(made.stderr + setup.stderr).strip()}")
                checker.rows.append((engine, "create", False, 0.0, made.stderr + setup.stderr))
                continue
            checker.check(
                engine,
                "--gpus all nvidia-smi -L",
                ["--gpus", "all", name, "nvidia-smi", "-L"],
                "GPU 0:",
            )
            checker.check(
                engine,
                "--gpus all cudaquery",
                ["--gpus", "all", name, "cudaquery"],
                f"devices: {count}",
            )
            checker.check(
                engine,
                "--gpus device=0 cudaquery",
                ["--gpus", "device=0", name, "cudaquery"],
                "devices: 1",
            )
            checker.check(
                engine,
                "--gpus none cudaquery",
                ["--gpus", "none", name, "cudaquery"],
                "libcuda.so.1",
                3,
            )
        failed = [r for r in checker.rows if not r[2]]
        total = time.monotonic() - started
        print(
            f"\n{len(checker.rows) - len(failed)} passed, {len(failed)} failed"
            f" in {total:.0f} s ({len(engines)} engines)"
        )
        return 1 if failed or not engines or total > 300 else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _count(checker: Checker) -> int:
    """How many GPUs ``--gpus all`` binds, by ucore's own report."""
    report = json.loads(checker.ucore("info", "--devices", "--json", "--gpus", "all").stdout)
    gpu = next(p for p in report["providers"] if p["kind"] == "nvidia.com/gpu")
    return sum(1 for g in gpu["gpus"] if g["index"] >= 0)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("prepare", "run"))
    parser.add_argument("--out", type=Path, default=HERE / ".cache" / "gpu-check")
    parser.add_argument("--synthetic", action="store_true", help="the tests' synthetic host")
    args = parser.parse_args(argv)
    if args.action == "prepare":
        prepare(args.out)
        return 0
    return run(args.out, args.synthetic)


if __name__ == "__main__":
    sys.exit(main())
