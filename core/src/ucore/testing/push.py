"""Push test images to a registry over the distribution API, with nothing but ``requests``.

Tests push once per session to an open registry; registries that demand authentication share
its storage, so pushing never needs credentials. :meth:`Pusher.put_manifest` with
``check=False`` also lets hostile tests probe what the registry refuses.

What Debian's docker-registry 2.8 accepts (checked by ``tests/test_harness.py``): OCI and Docker
schema 2 manifests and indexes whose every referenced blob or manifest already exists, with any
layer media type (zstd and in-toto included). It refuses schema 1 (``MANIFEST_INVALID``) and
manifest bodies over 4 MiB (3 MiB still passes). A manifest can never reference a blob whose
bytes do not match its digest, since uploads are verified: serve such content, schema 1,
malformed JSON or oversized manifests through ``tests/support/faultproxy.py`` (``serve``)
instead. Beware when pulling: for a Docker manifest list or schema 2 manifest requested with an
``Accept`` header that lacks the Docker types, 2.8 answers with a down-converted *schema 1*
manifest of the amd64 entry.
"""

from __future__ import annotations

from typing import Optional, Union
from urllib.parse import urljoin

import requests

from ucore.testing.images import Blob, Image, Index


class PushError(RuntimeError):
    """The registry refused something the test expected it to accept."""


class Pusher:
    """Talks to one registry (``base_url`` like ``http://127.0.0.1:5000``)."""

    def __init__(
        self,
        base_url: str,
        session: Optional[requests.Session] = None,
        auth: Optional[tuple[str, str]] = None,
        timeout: float = 30.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = session or requests.Session()
        # Tests talk to loopback registries: never route them through a proxy from the environment.
        self.session.trust_env = False
        if auth:
            self.session.auth = auth
        self.timeout = timeout

    def _url(self, repo: str, kind: str, ref: str = "") -> str:
        return f"{self.base_url}/v2/{repo}/{kind}/{ref}"

    def blob_exists(self, repo: str, digest: str) -> bool:
        resp = self.session.head(self._url(repo, "blobs", digest), timeout=self.timeout)
        return resp.status_code == 200

    def push_blob(self, repo: str, blob: Union[Blob, bytes], skip_existing: bool = True) -> str:
        """Monolithic upload (POST, then PUT with ``?digest=``); returns the digest."""
        if isinstance(blob, bytes):
            blob = Blob("application/octet-stream", blob)
        if skip_existing and self.blob_exists(repo, blob.digest):
            return blob.digest
        start = self.session.post(self._url(repo, "blobs", "uploads/"), timeout=self.timeout)
        if start.status_code != 202:
            raise PushError(f"upload start for {repo}: {start.status_code} {start.text[:300]}")
        location = urljoin(self.base_url + "/", start.headers["Location"])
        sep = "&" if "?" in location else "?"
        done = self.session.put(
            f"{location}{sep}digest={blob.digest}",
            data=blob.data,
            headers={"Content-Type": "application/octet-stream"},
            timeout=self.timeout,
        )
        if done.status_code != 201:
            raise PushError(
                f"upload of {blob.digest} to {repo}: {done.status_code} {done.text[:300]}"
            )
        return blob.digest

    def put_manifest(
        self,
        repo: str,
        reference: str,
        body: bytes,
        media_type: str,
        check: bool = True,
    ) -> requests.Response:
        """PUT a manifest (or index) under a tag or a digest.

        :param check: raise :class:`PushError` unless the registry answers 201; with False, return
            the response so a test can look at what the registry refused and why.
        """
        resp = self.session.put(
            self._url(repo, "manifests", reference),
            data=body,
            headers={"Content-Type": media_type},
            timeout=self.timeout,
        )
        if check and resp.status_code != 201:
            raise PushError(f"manifest {repo}:{reference}: {resp.status_code} {resp.text[:300]}")
        return resp

    def push_image(self, repo: str, image: Image, tags: tuple[str, ...] = ()) -> str:
        """Blobs, then the manifest by digest and under each tag; returns the manifest digest."""
        for blob in image.blobs:
            self.push_blob(repo, blob)
        self.put_manifest(repo, image.digest, image.manifest.data, image.manifest.media_type)
        for tag in tags:
            self.put_manifest(repo, tag, image.manifest.data, image.manifest.media_type)
        return image.digest

    def push_index(self, repo: str, index: Index, tags: tuple[str, ...] = ()) -> str:
        """Every child image by digest first (the registry checks they exist), then the index."""
        for image in index.images:
            self.push_image(repo, image)
        self.put_manifest(repo, index.digest, index.manifest.data, index.manifest.media_type)
        for tag in tags:
            self.put_manifest(repo, tag, index.manifest.data, index.manifest.media_type)
        return index.digest

    def push(self, reference: str, content: Union[Image, Index]) -> str:
        """Push ``content`` to ``repo:tag`` (``reference`` without the registry part)."""
        repo, _, tag = reference.rpartition(":")
        if isinstance(content, Index):
            return self.push_index(repo, content, (tag,))
        return self.push_image(repo, content, (tag,))

    def delete_manifest(self, repo: str, digest: str) -> int:
        """Delete by digest (the registry must run with ``storage.delete.enabled``)."""
        return self.session.delete(
            self._url(repo, "manifests", digest), timeout=self.timeout
        ).status_code

    def get_manifest(self, repo: str, reference: str, accept: str) -> requests.Response:
        return self.session.get(
            self._url(repo, "manifests", reference),
            headers={"Accept": accept},
            timeout=self.timeout,
        )
