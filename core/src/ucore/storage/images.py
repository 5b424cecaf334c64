"""Images in the local store: lookup by the names users type, listing, tagging, verifying and
removing (with garbage collection of blobs no other image uses)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Optional

from ucore.log import get_logger
from ucore.storage import manifest as mf
from ucore.storage.store import Store
from ucore.values.errors import IntegrityError, NotFoundError, StoreError, UsageError
from ucore.values.oci import (
    Descriptor,
    Digest,
    Image,
    ImageRef,
    Platform,
    names_registry,
    split_registry,
)

log = get_logger(__name__)


def parse_ref(text: str, default_registry: str) -> ImageRef:
    return ImageRef.parse(text, default_registry=split_registry(default_registry)[1])


def lookup(store: Store, text: str, default_registry: str) -> ImageRef:
    """Find a stored image: the exact reference first; then, for a name typed without a
    registry, the one stored image of that name pulled from any registry (as udocker users
    expect after ``pull --registry=…``). The site store's images are found too, unless the
    user's store has one of the same name (see :mod:`ucore.storage.store`)."""
    ref = parse_ref(text, default_registry)
    if store.has_ref(ref):
        return ref
    if not names_registry(text):
        short = {ref.repository, ref.repository.removeprefix("library/")}
        matches = [
            r
            for r, _rec, _site in store.all_refs()
            if r.repository.removeprefix("library/") in short
            and r.tag == ref.tag
            and r.digest == ref.digest
        ]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            names = ", ".join(str(m) for m in matches)
            raise UsageError(f"{text!r} is ambiguous: it could be any of {names}")
    raise NotFoundError(f"image {text} not found locally (see 'ucore images'; 'ucore pull' it)")


def load(store: Store, ref: ImageRef, record: Optional[dict[str, Any]] = None) -> Image:
    record = record if record is not None else store.get_ref(ref)
    if record is None:
        raise NotFoundError(f"image {ref.familiar} not found locally")
    try:
        digest = Digest.parse(record.get("manifest"))
        index = Digest.parse(record["index"]) if record.get("index") else None
    except IntegrityError as exc:
        raise StoreError(f"reference file of {ref.familiar} is corrupt: {exc}") from None
    doc = mf.parse(store.read_blob(digest, mf.MAX_MANIFEST))
    if not isinstance(doc, mf.Manifest):
        raise StoreError(f"reference {ref.familiar} does not point at an image manifest")
    return Image(
        ref=ref,
        manifest_digest=digest,
        config_digest=doc.config.digest,
        layers=doc.layers,
        platform=_recorded_platform(record.get("platform")),
        index_digest=index,
    )


def _recorded_platform(text: Any) -> Optional[Platform]:
    """The platform a reference file records, or None when it cannot be read back (edited by
    hand, or written by an older ucore): it is shown, never needed to use the image, so it
    must not make the image, or every command that reads all references, fail."""
    if not isinstance(text, str):
        return None
    try:
        return Platform.parse(text)
    except UsageError:
        return None


def read_manifest(store: Store, image: Image) -> dict[str, Any]:
    return mf.parse_config(store.read_blob(image.manifest_digest, mf.MAX_MANIFEST))


def blobs_of(image: Image) -> set[Digest]:
    found = {image.manifest_digest, image.config_digest, *(d.digest for d in image.layers)}
    if image.index_digest:
        found.add(image.index_digest)
    return found


def used_blobs(store: Store) -> tuple[set[Digest], list[ImageRef]]:
    """The blobs the store's images use, and the references that cannot be read or loaded:
    the blobs those use are unknown, so nothing may be freed as unused while they exist."""
    used: set[Digest] = set()
    damaged: list[ImageRef] = []
    for ref, record in store.list_refs():
        try:
            used |= blobs_of(load(store, ref, record))
        except (NotFoundError, StoreError, IntegrityError):
            damaged.append(ref)
    return used, damaged


def drop_unused(store: Store, new: set[Digest]) -> None:
    """Remove those of the blobs an import or load just added that no image uses (it was
    refused or interrupted), so that it leaves the store as it was."""
    used, _damaged = used_blobs(store)
    for digest in new - used:
        store.remove_blob(digest)


def prune(store: Store) -> list[tuple[Digest, int]]:
    """Remove every blob no image uses, and what dead processes left in ``tmp/``; returns
    the blobs removed with their sizes.

    Such blobs come from a pull, import or load that was interrupted before it wrote its
    reference, and from an ``rmi`` that ran while a pull held the store. Refused while a pull,
    create, import or load runs (it may be about to reference a blob that looks unused), and
    while a reference is damaged (its blobs are unknown)."""
    if not store.root.exists():
        return []
    store.ensure()
    with store.shared_lock("gc", exclusive=True) as got:
        if not got:
            raise StoreError(
                "a pull, create, import or load is using the store: run 'ucore prune' again"
                " when it has finished"
            )
        used, damaged = used_blobs(store)
        if damaged:
            name = damaged[0].familiar
            raise StoreError(
                f"image {name} is damaged, so the blobs it uses are unknown: nothing was"
                f" pruned ('ucore rmi -f {name}' removes it)"
            )
        removed = []
        for digest, size in sorted(store.list_blobs(), key=lambda blob: blob[0].hex):
            if digest not in used:
                store.remove_blob(digest)
                removed.append((digest, size))
        store.cleanup_tmp()
    return removed


def tag(store: Store, source: ImageRef, target: ImageRef) -> None:
    record = store.get_ref(source)
    if record is None:
        raise NotFoundError(f"image {source.familiar} not found locally")
    record = {k: v for k, v in record.items() if k != "ref"}
    store.set_ref(target, record)


def remove(store: Store, ref: ImageRef, force: bool = False) -> list[Digest]:
    """Drop the reference, then the blobs no other image uses. Blobs are left for a later
    ``rmi`` when a pull or a create is running (it may be about to reference them). A
    protected image is refused unless ``force``. Containers made from the image keep running:
    each has its own copy of the image config.

    An image whose reference or manifest is damaged cannot say whether it is protected nor
    which blobs it uses: ``force`` removes its reference, and its blobs stay.

    An image of the site store is refused, even with ``force``: ucore never writes there."""
    refuse_site(store, ref, "removed")
    try:
        image = load(store, ref)
        record = store.get_ref(ref)
    except (StoreError, IntegrityError, NotFoundError) as exc:
        if not force:
            raise type(exc)(f"{exc} ('ucore rmi -f' removes the name)") from None
        store.delete_ref(ref)
        return []
    if not force and record is not None and record.get("protected"):
        raise UsageError(f"image {ref.familiar} is protected: 'ucore unprotect' it first")
    removed: list[Digest] = []
    # taken before the reference goes: a lock that cannot be opened then leaves it in place
    with store.shared_lock("gc", exclusive=True) as got:
        store.delete_ref(ref)
        if not got:
            log.warning(
                "a pull, create, import or load is using the store: the image's blobs were"
                " kept ('ucore prune' frees them later)",
                image=ref.familiar,
            )
            return removed
        unused = blobs_of(image) - used_blobs(store)[0]
        for digest in sorted(unused, key=str):
            store.remove_blob(digest)
            removed.append(digest)
    return removed


def refuse_site(store: Store, ref: ImageRef, what: str) -> None:
    """A UsageError when ``ref`` is the site store's: only its administrator changes it."""
    site = store.site
    if site is not None and store.in_site(ref):
        raise UsageError(
            f"image {ref.familiar} is in the site store {site.root}, which is read-only: it"
            f" cannot be {what} (ask the administrator)"
        )


def verify(store: Store, image: Image) -> list[str]:
    """Re-hash every blob of the image, then uncompress each layer and check it against the
    ``diff_id`` its config lists (what ``create`` would refuse); returns the problems found
    (empty when sound)."""
    problems = _verify_blobs(store, image)
    return problems or _verify_diff_ids(store, image)


def _verify_blobs(store: Store, image: Image) -> list[str]:
    problems = []
    descs: Iterable[Descriptor] = image.layers
    expected: dict[Digest, Optional[int]] = {d.digest: d.size for d in descs}
    expected.update({image.manifest_digest: None, image.config_digest: None})
    if image.index_digest:
        expected[image.index_digest] = None
    for digest, size in sorted(expected.items(), key=lambda kv: str(kv[0])):
        if not store.has_blob(digest):
            problems.append(f"blob {digest} is missing")
            continue
        try:
            actual, actual_size = store.hash_blob(digest)
        except OSError as exc:  # a directory in its place, a blob made unreadable
            problems.append(f"blob {digest} cannot be read ({exc.strerror or exc})")
            continue
        if actual != digest:
            problems.append(f"blob {digest} is corrupt (hashes to {actual})")
        elif size is not None and actual_size != size:
            problems.append(f"blob {digest} has {actual_size} bytes, expected {size}")
    return problems


def _verify_diff_ids(store: Store, image: Image) -> list[str]:
    """A pull checks each blob against its digest, but nothing checks the uncompressed
    content of a layer that arrived otherwise (``load``, a registry that lies) until a
    ``create`` unpacks it. Bounded like an unpack, so a decompression bomb ends."""
    from ucore.storage.extract import Limits
    from ucore.storage.stream import BadLayer, LayerStream

    try:
        ids = mf.config_diff_ids(mf.read_config(store, image))
    except IntegrityError as exc:
        return [f"config {image.config_digest}: {exc}"]
    if len(ids) != len(image.layers):
        layers = len(image.layers)
        return [f"config {image.config_digest} lists {len(ids)} diff_ids for {layers} layers"]
    problems = []
    budget = Limits().max_bytes
    for desc, diff_id in zip(image.layers, ids):
        with open(store.blob_path(desc.digest), "rb") as raw:
            stream = LayerStream(raw, budget)
            try:
                _packed, (plain, size) = stream.finish()
            except (BadLayer, OSError, EOFError) as exc:
                problems.append(f"layer {desc.digest} cannot be uncompressed: {exc}")
                continue
            finally:
                stream.close()
        budget -= size
        if plain != diff_id:
            problems.append(
                f"layer {desc.digest} uncompresses to {plain}, not to the diff_id {diff_id}"
                " its config lists"
            )
    return problems
