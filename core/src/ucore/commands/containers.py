"""Container commands, as udocker users type them: create, ps, rm, name, rmname, rename,
clone, export, import, protect and unprotect (``inspect`` is in :mod:`ucore.commands.images`).

udocker's ``ps`` lists created containers, not processes: a container here is a directory in
the store, made once by ``create`` and run any number of times.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from typing import TYPE_CHECKING, Any

from ucore import api
from ucore.commands import add_registry_options, read_input, write_output
from ucore.storage import containers, images
from ucore.values.errors import NotFoundError, UcoreError, UsageError
from ucore.values.model import Container
from ucore.values.oci import ImageRef

if TYPE_CHECKING:
    from ucore.session import Session
    from ucore.storage.store import Store


def add_commands(sub: Any, common: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    parsers: dict[str, argparse.ArgumentParser] = {}

    p = sub.add_parser(
        "create",
        parents=[common],
        help="flatten an image into a new container (pulling it if missing); prints its id",
    )
    p.add_argument("--name", metavar="NAME", help="name the container")
    p.add_argument(
        "--force",
        action="store_true",
        help="with --name: take the name over from the container that has it (which stays)",
    )
    add_registry_options(p)
    p.add_argument("image", metavar="IMAGE")
    p.set_defaults(handler=cmd_create)
    parsers["create"] = p

    p = sub.add_parser("ps", parents=[common], help="list created containers (not processes)")
    p.add_argument("-m", dest="show_engine", action="store_true", help="show the engine")
    p.add_argument("-s", dest="show_size", action="store_true", help="show the size on disk")
    p.add_argument("--json", action="store_true", help="JSON on stdout")
    p.set_defaults(handler=cmd_ps)
    parsers["ps"] = p

    p = sub.add_parser("rm", parents=[common], help="remove containers")
    p.add_argument("-f", "--force", action="store_true", help="remove protected ones too")
    p.add_argument("container", metavar="CONTAINER", nargs="+")
    p.set_defaults(handler=cmd_rm)
    parsers["rm"] = p

    p = sub.add_parser("name", parents=[common], help="give a container a(nother) name")
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(handler=cmd_name)
    parsers["name"] = p

    p = sub.add_parser("rmname", parents=[common], help="remove a container's name")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(handler=cmd_rmname)
    parsers["rmname"] = p

    p = sub.add_parser("rename", parents=[common], help="change a container's name")
    p.add_argument("name", metavar="NAME")
    p.add_argument("new_name", metavar="NEWNAME")
    p.set_defaults(handler=cmd_rename)
    parsers["rename"] = p

    p = sub.add_parser("clone", parents=[common], help="copy a container; prints the new id")
    p.add_argument("--name", metavar="NAME", help="name the copy")
    p.add_argument("container", metavar="CONTAINER")
    p.set_defaults(handler=cmd_clone)
    parsers["clone"] = p

    p = sub.add_parser(
        "export", parents=[common], help="write a container's root filesystem as a tarball"
    )
    p.add_argument(
        "-o", "--output", metavar="FILE", help="tarball to write ('-' or absent: stdout)"
    )
    p.add_argument("--clone", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "container",
        metavar="[-] CONTAINER",
        nargs="+",
        help="the container ('export - CONTAINER' writes to stdout, as in udocker)",
    )
    p.set_defaults(handler=cmd_export)
    parsers["export"] = p

    p = sub.add_parser(
        "import",
        parents=[common],
        help="a root filesystem tarball (plain, gzip or zstd) to an image or a container",
    )
    p.add_argument(
        "--tocontainer",
        action="store_true",
        help="make a container from it (prints its id); no image is kept",
    )
    p.add_argument("--name", metavar="NAME", help="with --tocontainer: name the container")
    p.add_argument("--clone", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mv", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("file", metavar="FILE", help="the tarball ('-': stdin)")
    p.add_argument(
        "image",
        metavar="NAME:TAG",
        nargs="?",
        help="the image to make (with --tocontainer: only recorded as the container's image)",
    )
    p.set_defaults(handler=cmd_import)
    parsers["import"] = p

    for command, verb in (("protect", "against removal"), ("unprotect", "from protection")):
        p = sub.add_parser(
            command, parents=[common], help=f"{command} a container or an image {verb}"
        )
        p.add_argument("target", metavar="CONTAINER|IMAGE")
        p.set_defaults(handler=cmd_protect, protect=command == "protect")
        parsers[command] = p
    return parsers


def _print_json(data: Any) -> None:
    import json

    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")


# --- create ---------------------------------------------------------------------------------


def cmd_create(session: Session, args: argparse.Namespace) -> int:
    print(api.create(session, args.image, args.name, take_name=args.force).id)
    return 0


# --- ps -------------------------------------------------------------------------------------


def _row(container: Container, size: bool) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": container.id,
        "names": list(container.names),
        "image": container.image,
        "manifest": container.manifest_digest,
        "protected": container.protected,
        "engine": container.engine,
        "created": container.created,
        "root": str(container.root),
    }
    if size:
        row["size"] = containers.size_of(container)
    return row


def cmd_ps(session: Session, args: argparse.Namespace) -> int:
    store = session.store
    rows = []
    for container, damage in containers.all_containers(store):
        rows.append(_row(container, args.show_size))
        if damage is not None:
            rows[-1]["error"] = f"{damage} ('ucore rm -f' removes it)"
    if args.json:
        _print_json(rows)
        return 0
    from ucore.builtin.progress import human

    header = f"{'CONTAINER ID':<32} P {'NAMES':<20} {'CREATED':<16}"
    header += f" {'ENGINE':<12}" if args.show_engine else ""
    header += f" {'SIZE':>9}" if args.show_size else ""
    print(f"{header} IMAGE")
    for row in rows:
        created = datetime.datetime.fromtimestamp(row["created"]).strftime("%Y-%m-%d %H:%M")
        line = f"{row['id']:<32} {'P' if row['protected'] else '.'}"
        line += f" {','.join(row['names']) or '-':<20}"
        if "error" in row:
            print(f"{line} ({row['error']})")
            continue
        line += f" {created:<16}"
        if args.show_engine:
            line += f" {row['engine'] or '-':<12}"
        if args.show_size:
            line += f" {human(row['size']):>9}"
        print(f"{line} {_familiar(row['image'])}")
    return 0


def _familiar(image: str) -> str:
    try:
        return ImageRef.parse(image).familiar
    except UcoreError:
        return image


# --- rm, names, clone -------------------------------------------------------------------------


def cmd_rm(session: Session, args: argparse.Namespace) -> int:
    """Remove each container given; go on past failures (as udocker does) and report the
    first, with a count of the others, as the one error line. A container whose removal
    was killed half way is no longer found by name, but its id still removes it."""
    store = session.store
    finished = containers.remove_leftovers(store)
    failures: list[UcoreError] = []
    for text in args.container:
        try:
            if text not in finished:
                api.remove_container(session, text, args.force)
        except UcoreError as exc:
            failures.append(exc)
            continue
        print(text)
    if failures:
        first = failures[0]
        if len(failures) > 1:
            raise type(first)(f"{first} (and {len(failures) - 1} more not removed)")
        raise first
    return 0


def cmd_name(session: Session, args: argparse.Namespace) -> int:
    store = session.store.ensure()
    container = containers.lookup(store, args.container)
    containers.reserve_name(store, args.name, container.id)
    return 0


def cmd_rmname(session: Session, args: argparse.Namespace) -> int:
    containers.check_name(args.name)
    if not containers.release_name(session.store, args.name):
        raise NotFoundError(f"no container named {args.name!r} (see 'ucore ps')")
    return 0


def cmd_rename(session: Session, args: argparse.Namespace) -> int:
    """The new name is claimed before the old one is let go, so the container is never
    without a name and a rival cannot take the new one half way."""
    store = session.store.ensure()
    containers.check_name(args.name)
    container = containers.lookup(store, args.name)
    if args.name not in container.names:
        raise NotFoundError(f"no container named {args.name!r} (see 'ucore ps')")
    containers.reserve_name(store, args.new_name, container.id)
    containers.release_name(store, args.name, container.id)
    return 0


def cmd_clone(session: Session, args: argparse.Namespace) -> int:
    store = session.store.ensure()
    if args.name is not None:
        containers.check_name(args.name)
    source = containers.lookup(store, args.container)
    print(containers.clone(session, source, args.name).id)
    return 0


# --- protect --------------------------------------------------------------------------------


def cmd_protect(session: Session, args: argparse.Namespace) -> int:
    """A container first, then an image, as udocker resolves the argument."""
    store = session.store
    container = containers.find(store, args.target)
    if container is not None:
        containers.update(store, container, protected=args.protect)
        return 0
    try:
        ref = images.lookup(store, args.target, session.config.registry)
    except NotFoundError:
        raise NotFoundError(
            f"image {args.target} not found locally, nor a container of that name or id"
            " (see 'ucore images' and 'ucore ps')"
        ) from None
    _protect_image(store, ref, args.protect)
    return 0


def _protect_image(store: Store, ref: ImageRef, protected: bool) -> None:
    """Protection lives in the reference record of this name of the image, which ``rmi``
    checks (``tag`` copies the record, so a tag made afterwards is protected too). The site
    store's images are not the user's to change (and its administrator's to remove)."""
    images.refuse_site(store, ref, "protected or unprotected")
    record = store.get_ref(ref)
    if record is None:
        raise NotFoundError(f"image {ref.familiar} not found locally")
    record = {k: v for k, v in record.items() if k not in ("ref", "protected")}
    if protected:
        record["protected"] = True
    store.set_ref(ref, record)


# --- export and import ----------------------------------------------------------------------


def cmd_export(session: Session, args: argparse.Namespace) -> int:
    from ucore.storage.rootfs_archive import export

    if args.clone:
        raise UsageError(
            "export --clone (udocker's container format) is not supported: export the root"
            " filesystem and 'ucore import --tocontainer' it"
        )
    output = args.output or "-"
    if len(args.container) == 2 and args.container[0] == "-" and args.output in (None, "-"):
        args.container = args.container[1:]
    if len(args.container) != 1:
        raise UsageError("export: give one CONTAINER (and -o FILE, or '-' for stdout)")
    container = containers.lookup(session.store, args.container[0])
    write_output(output, "export", lambda out: export(container, out))
    return 0


_IMPORT_HINT = "give a FILE or pipe a tarball into stdin ('-')"


def cmd_import(session: Session, args: argparse.Namespace) -> int:
    from ucore.storage.rootfs_archive import import_container, import_image

    if args.clone:
        raise UsageError(
            "import --clone (udocker's container format) is not supported: use"
            " 'ucore import --tocontainer' with a root filesystem tarball"
        )
    if args.name is not None and not args.tocontainer:
        raise UsageError("import: --name applies only with --tocontainer")
    source = "stdin" if args.file == "-" else os.path.basename(args.file)
    if args.tocontainer:
        if args.name is not None:
            containers.check_name(args.name)
        ref = (
            images.parse_ref(args.image, session.config.registry)
            if args.image
            else ImageRef("localhost", "imported", "unknown")
        )
        tarball = read_input(args.file, "import", _IMPORT_HINT)
        with tarball as stream, session.stage("import", source):
            container = import_container(session, stream, ref, source, args.name)
        print(container.id)
        return 0
    if not args.image:
        raise UsageError("import: give the image a NAME:TAG (or use --tocontainer)")
    ref = images.parse_ref(args.image, session.config.registry)
    tarball = read_input(args.file, "import", _IMPORT_HINT)
    with tarball as stream, session.stage("import", source):
        image = import_image(session.store, stream, ref, source)
    print(image.id)
    return 0


def describe(session: Session, container: Container) -> dict[str, Any]:
    """What ``inspect CONTAINER`` shows: the container's record, and the config of the image
    it was made from (the container's own copy; none for a bare root)."""
    config = containers.image_config(container) or None
    return {**_row(container, size=False), "dir": str(container.dir), "image_config": config}
