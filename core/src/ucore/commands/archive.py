"""Tarball commands: load (docker-save or OCI layout, file or stdin) and save."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from ucore.commands import read_input, write_output
from ucore.storage import images

if TYPE_CHECKING:
    from ucore.session import Session


def add_commands(sub: Any, common: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    p = sub.add_parser(
        "load", parents=[common], help="load images from a docker-save or OCI-layout tarball"
    )
    p.add_argument("-i", "--input", default="-", metavar="FILE", help="tarball (default stdin)")
    p.add_argument("--tag", metavar="NAME", help="name for an archive that names no image")
    p.set_defaults(handler=cmd_load)
    q = sub.add_parser("save", parents=[common], help="write images as a docker-save tarball")
    q.add_argument("-o", "--output", default="-", metavar="FILE", help="tarball (default stdout)")
    q.add_argument("image", metavar="IMAGE", nargs="+")
    q.set_defaults(handler=cmd_save)
    return {"load": p, "save": q}


def cmd_load(session: Session, args: argparse.Namespace) -> int:
    from ucore.storage.archive import load

    tarball = read_input(args.input, "load", "give -i FILE or pipe a tarball into stdin")
    with tarball as stream, session.stage("load", "stdin" if args.input == "-" else args.input):
        loaded = load(session.store, stream, args.tag)
    for ref in loaded:
        print(f"loaded {ref.familiar}")
    return 0


def cmd_save(session: Session, args: argparse.Namespace) -> int:
    from ucore.storage.archive import save

    store = session.store
    refs = [images.lookup(store, text, session.config.registry) for text in args.image]
    write_output(args.output, "save", lambda out: save(store, refs, out))
    return 0
