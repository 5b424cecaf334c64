"""The OCI distribution (Docker Registry HTTP API v2) client behind ``ucore pull``.

Manifests are hashed as received and compared with the digest asked for (or the registry's
``Docker-Content-Digest``); blobs are size-checked, hashed while streaming and published only
when they match. Layers download in parallel (``--jobs``), each under a per-blob lock so that
many jobs pulling the same image into one store download each blob once.
"""

from __future__ import annotations

import hashlib
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any, Optional
from urllib.parse import urlsplit

import attrs

from ucore.builtin.registry.credentials import Credentials
from ucore.builtin.registry.transport import BROKEN, Transport, is_loopback, short_reason
from ucore.log import get_logger
from ucore.storage import manifest as mf
from ucore.values.errors import IntegrityError, NotFoundError, RegistryError, UsageError
from ucore.values.events import BlobFinished, BlobProgress, BlobStarted
from ucore.values.hub import DOCKER_HUB, DOCKER_HUB_API
from ucore.values.oci import (
    Descriptor,
    Digest,
    Image,
    ImageRef,
    Platform,
    split_registry,
)

if TYPE_CHECKING:
    from ucore.session import Session
    from ucore.storage.store import BlobWriter, Store

log = get_logger(__name__)

PROGRESS_INTERVAL = 0.25


class Cancelled(Exception):
    """Another download of the same pull failed: stop this one, keep its partial file."""


class _GivenCredentials:
    """Credentials under test by ``login``, not yet stored."""

    def __init__(self, user: str, password: str) -> None:
        self.creds = (user, password)

    def lookup(self, host: str) -> tuple[str, str]:
        return self.creds


class DistributionClient:
    """Talks to any registry speaking the distribution API; the builtin, catch-all client."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.config = session.config

    def handles(self, ref: ImageRef) -> bool:
        """Every reference: this catch-all client is asked after every plugin's."""
        return True

    def check_login(self, server: str, user: str, password: str) -> None:
        """Authenticate once against ``/v2/`` as ``docker login`` does, so that wrong
        credentials are refused before they are stored."""
        ref = ImageRef(server, "login-check", "latest")
        t = self.transport(ref, _GivenCredentials(user, password))
        try:
            resp = t.request("GET", "/v2/", scope="")
            resp.close()
        finally:
            t.close()
        if resp.status_code != 200:
            raise RegistryError(f"{server} answered {resp.status_code} to a login check")

    # --- connection -------------------------------------------------------------------------

    def transport(self, ref: ImageRef, credentials: Any = None) -> Transport:
        opts = self.config.options
        scheme, default_host = split_registry(self.config.registry)
        if ref.registry != default_host:
            scheme = None
        marked = ref.registry in self.config.insecure_registries or (
            bool(getattr(opts, "insecure", False)) and ref.registry == default_host
        )
        insecure = marked or is_loopback(ref.registry)
        if scheme == "http" and not insecure:
            raise UsageError(
                f"{ref.registry} is a plain-HTTP registry: pass --insecure (or list it in"
                " UCORE_INSECURE) to allow it"
            )
        host = DOCKER_HUB_API if ref.registry == DOCKER_HUB else ref.registry
        return Transport(
            host,
            scheme or "https",
            insecure,
            credentials or Credentials(self.session.store),
            timeout=(self.config.connect_timeout, self.config.timeout),
            retries=self.config.retries,
            max_retry_after=self.config.max_retry_after,
            pool=self.config.jobs,
            emit=self.session.emit,
            stall_timeout=self.config.stall_timeout,
        )

    # --- manifests --------------------------------------------------------------------------

    def get_manifest(
        self, t: Transport, ref: ImageRef, reference: str, expected: Optional[Digest]
    ) -> tuple[bytes, str, Digest]:
        """Fetch and verify a manifest or index by tag or digest."""
        scope = f"repository:{ref.repository}:pull"
        resp = t.request(
            "GET",
            f"/v2/{ref.repository}/manifests/{reference}",
            scope,
            headers={"Accept": mf.ACCEPT},
            stream=True,
        )
        with resp:
            if resp.status_code == 404:
                raise NotFoundError(f"{ref.familiar}: not found in {ref.registry}")
            if resp.status_code == 403:
                raise NotFoundError(f"{ref.familiar}: access denied by {ref.registry}")
            if resp.status_code != 200:
                raise RegistryError(
                    f"{ref.registry} answered {resp.status_code} for the manifest of {ref.familiar}"
                )
            raw = t.read_document(resp, mf.MAX_MANIFEST, f"manifest of {ref.familiar}")
            ctype = resp.headers.get("Content-Type", "")
            claimed = resp.headers.get("Docker-Content-Digest", "")
        actual = Digest(hashlib.sha256(raw).hexdigest())
        if expected is not None and actual != expected:
            raise IntegrityError(
                f"manifest digest mismatch for {ref.familiar}: expected {expected}, got {actual}"
            )
        if expected is None and claimed.startswith("sha256:") and claimed != str(actual):
            raise IntegrityError(
                f"manifest of {ref.familiar} does not match the registry's digest {claimed}"
            )
        return raw, ctype, actual

    # --- blobs ------------------------------------------------------------------------------

    def fetch_blob(
        self, t: Transport, ref: ImageRef, desc: Descriptor, store: Store, stop: threading.Event
    ) -> None:
        """Download one blob into the store unless it is there already.

        Raises :class:`Cancelled` when another download of the pull has failed before this
        one started: a queued download would otherwise wait out its own stall budget on a
        registry that has stopped answering, and the pull would give up only after them all.
        """
        if stop.is_set():
            raise Cancelled()
        emit = self.session.emit
        if store.has_blob(desc.digest, desc.size):
            emit(BlobFinished(digest=str(desc.digest), total=desc.size, cached=True))
            return
        what = f"blob {desc.digest.short}"
        with store.lock(desc.digest.hex, what, log.warning):
            if store.has_blob(desc.digest, desc.size):
                emit(BlobFinished(digest=str(desc.digest), total=desc.size, cached=True))
                return
            started = time.monotonic()
            writer = store.writer(desc.digest, desc.size).open(resume=True)
            emit(
                BlobStarted(
                    digest=str(desc.digest),
                    total=desc.size,
                    done=writer.written,
                    media_type=desc.media_type,
                )
            )
            try:
                self._download(t, ref, desc, writer, stop)
            except IntegrityError:
                writer.discard()
                raise
            except BaseException:
                writer.close()
                raise
            writer.publish()
            emit(
                BlobFinished(
                    digest=str(desc.digest),
                    total=desc.size,
                    seconds=round(time.monotonic() - started, 6),
                )
            )

    def _download(
        self,
        t: Transport,
        ref: ImageRef,
        desc: Descriptor,
        writer: BlobWriter,
        stop: threading.Event,
    ) -> None:
        scope = f"repository:{ref.repository}:pull"
        path = f"/v2/{ref.repository}/blobs/{desc.digest}"
        if desc.urls and desc.media_type in mf.FOREIGN_LAYER_TYPES:
            path = next((u for u in desc.urls if u.startswith("https://")), "")
            if not path:
                raise RegistryError(f"foreign layer {desc.digest.short} has no https URL")
        failures = 0
        listening = self.session.listening
        # One budget for the blob's every attempt and resume: a registry that sends the
        # headers and then nothing must not cost a read timeout per attempt.
        budget = t.budget()
        while writer.written < desc.size or desc.size == 0:
            offset = writer.written
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            resp = t.request("GET", path, scope, headers=headers, stream=True, budget=budget)
            with resp:
                if resp.status_code == 404:
                    raise NotFoundError(f"blob {desc.digest} of {ref.familiar} not found")
                if resp.status_code == 206:
                    if not resp.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
                        writer.restart()
                        failures += 1
                        if failures >= t.retries:
                            raise RegistryError(f"{t.host} answered a bad range for {desc.digest}")
                        continue
                elif resp.status_code == 200:
                    if offset:
                        writer.restart()
                else:
                    raise RegistryError(f"{t.host} answered {resp.status_code} for {desc.digest}")
                length = resp.headers.get("Content-Length")
                if length and length.isdigit() and writer.written + int(length) > desc.size:
                    raise IntegrityError(
                        f"blob {desc.digest} is larger than the {desc.size} bytes announced"
                    )
                last = time.monotonic()
                try:
                    for chunk in t.body(resp):
                        budget.heard()
                        if stop.is_set():
                            raise Cancelled()
                        writer.write(chunk)
                        if listening and time.monotonic() - last > PROGRESS_INTERVAL:
                            last = time.monotonic()
                            self.session.emit(
                                BlobProgress(
                                    digest=str(desc.digest), done=writer.written, total=desc.size
                                )
                            )
                except BROKEN as exc:
                    budget.failed()
                    if budget.left() <= 0:  # the partial file stays for the next pull
                        peer = urlsplit(resp.url).netloc or t.host
                        raise budget.exhausted(peer, f"blob {desc.digest.short}") from None
                    failures += 1
                    if failures >= t.retries:
                        raise RegistryError(
                            f"download of {desc.digest.short} failed: {short_reason(exc)}"
                        ) from None
                    log.info(
                        "resuming interrupted download",
                        digest=str(desc.digest),
                        at=writer.written,
                        reason=short_reason(exc),
                    )
                    continue
            if desc.size == 0:
                break
            if writer.written < desc.size:
                failures += 1
                if failures >= t.retries:
                    raise RegistryError(f"download of {desc.digest.short} kept ending early")
        if listening:
            self.session.emit(
                BlobProgress(digest=str(desc.digest), done=writer.written, total=desc.size)
            )

    def fetch_blobs(
        self, t: Transport, ref: ImageRef, descs: list[Descriptor], store: Store
    ) -> None:
        """Download in parallel, largest first; the first failure stops the others."""
        todo = sorted({d.digest: d for d in descs}.values(), key=lambda d: -d.size)
        stop = threading.Event()
        if len(todo) <= 1 or self.config.jobs == 1:
            for desc in todo:
                self.fetch_blob(t, ref, desc, store, stop)
            return
        pool = ThreadPoolExecutor(max_workers=min(self.config.jobs, len(todo)))
        try:
            futures = [pool.submit(self.fetch_blob, t, ref, d, store, stop) for d in todo]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            errors = [f.exception() for f in done if f.exception() is not None]
            if errors:
                stop.set()
                wait(futures)
                first = next((e for e in errors if not isinstance(e, Cancelled)), errors[0])
                raise first  # type: ignore[misc]
        except BaseException:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)

    # --- the pull ---------------------------------------------------------------------------

    def pull(self, ref: ImageRef, store: Store, source: Optional[str] = None) -> Image:
        """Fetch ``ref`` into ``store``; with ``source`` (``host[:port]``) from that registry
        instead of ``ref``'s, the image still stored under ``ref``'s name (what a mirror or
        cache plugin needs: :func:`ucore.builtin.registry.builtin_client`)."""
        remote = attrs.evolve(ref, registry=source) if source else ref
        t = self.transport(remote)
        try:
            return self._pull(t, remote, store, ref)
        finally:
            t.close()

    def _pull(self, t: Transport, ref: ImageRef, store: Store, name: ImageRef) -> Image:
        session = self.session
        want = self.config.target_platform
        explicit = self.config.platform is not None
        with session.stage("fetch.manifest", str(ref)):
            raw, ctype, digest = self.get_manifest(t, ref, str(ref.digest or ref.tag), ref.digest)
            doc = mf.parse(raw, ctype)
            index_raw: Optional[bytes] = None
            index_digest: Optional[Digest] = None
            platform: Optional[Platform] = None
            if isinstance(doc, mf.Index):
                index_raw, index_digest = raw, digest
                chosen = doc.select(want)
                platform = chosen.platform
                raw, ctype, digest = self.get_manifest(t, ref, str(chosen.digest), chosen.digest)
                doc = mf.parse(raw, ctype)
                if not isinstance(doc, mf.Manifest):
                    raise IntegrityError(f"{ref.familiar}: nested indexes are not supported")
            manifest: mf.Manifest = doc
            mf.check_image_manifest(manifest, getattr(self.config.options, "allow_foreign", False))
        store.ensure()
        with store.shared_lock("gc"), session.stage("fetch.blobs", str(ref)):
            self.fetch_blobs(t, ref, [manifest.config], store)
            config = mf.parse_config(store.read_blob(manifest.config.digest, mf.MAX_CONFIG))
            found = mf.config_platform(config)
            if platform is None and found is not None and not want.matches(found):
                if explicit:
                    raise NotFoundError(f"{ref.familiar} is for {found}, not {want}")
                log.warning(
                    "image platform differs from this host", image=str(found), host=str(want)
                )
            platform = platform or found
            self.fetch_blobs(t, ref, list(manifest.layers), store)
            store.put_bytes(raw, digest)
            if index_raw is not None:
                store.put_bytes(index_raw, index_digest)
            record: dict[str, Any] = {
                "manifest": str(digest),
                "index": str(index_digest) if index_digest else None,
                "platform": str(platform) if platform else None,
                "pulled": time.time(),
            }
            store.set_ref(name, record)
        return Image(
            ref=name,
            manifest_digest=digest,
            config_digest=manifest.config.digest,
            layers=manifest.layers,
            platform=platform,
            index_digest=index_digest,
        )


def remote_manifest(session: Session, ref: ImageRef) -> bytes:
    """The raw manifest or index a registry serves for ``ref`` (``ucore manifest inspect``),
    checked as a pull would check it."""
    client = DistributionClient(session)
    t = client.transport(ref)
    try:
        raw, ctype, _digest = client.get_manifest(t, ref, str(ref.digest or ref.tag), ref.digest)
    finally:
        t.close()
    mf.parse(raw, ctype)
    return raw
