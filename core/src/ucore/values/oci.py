"""OCI and Docker values: digests, image references, platforms, descriptors, stored images.

Wire formats (manifest JSON, reference strings) are parsed into these at the edge, with every
field that comes from outside validated before any path or URL is built from it. They are
frozen attrs classes whose validators hold the rules, so a value built directly (a plugin's
``Digest(hexdigest)``, ``ImageRef(host, repo, tag)``) is checked as one parsed from text is,
and converters normalise what may arrive in several shapes (descriptor URLs, annotations).
The values a *run* needs live in :mod:`ucore.values.model`; these (and attrs) stay out of
``ucore run``'s start-up, which never touches a registry or a manifest unless it must pull or
create.
"""

from __future__ import annotations

import re
from typing import Any, Optional

import attrs

from ucore.values.errors import IntegrityError, UsageError
from ucore.values.hub import DOCKER_HUB, DOCKER_HUB_API, DOCKER_HUB_INDEX

_HEX64 = re.compile(r"[0-9a-f]{64}")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
# Docker's reference grammar (distribution/reference): lower-case path components separated by
# "/", each alpha-numeric runs joined by ".", "_", "__" or any number of "-".
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DOMAIN_COMPONENT = re.compile(r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])")
_PORT = re.compile(r"[0-9]{1,5}")
_MAX_NAME = 255
_PLATFORM_PART = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")


def _sha256_hex(_: object, __: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise IntegrityError(f"invalid sha256 digest {value!r}")


@attrs.frozen
class Digest:
    """A content digest; only sha256 is accepted (as containerd and Docker do by default)."""

    hex: str = attrs.field(validator=_sha256_hex)

    @classmethod
    def parse(cls, text: object) -> Digest:
        if not isinstance(text, str):
            raise IntegrityError(f"invalid digest {text!r}: not a string")
        algo, sep, hexpart = text.partition(":")
        if not sep:
            raise IntegrityError(f"invalid digest {text!r}: expected sha256:<64 hex digits>")
        if algo != "sha256":
            raise IntegrityError(f"unsupported digest algorithm {algo!r} in {text!r}")
        if not _HEX64.fullmatch(hexpart):
            raise IntegrityError(f"invalid digest {text!r}: expected sha256:<64 hex digits>")
        return cls(hexpart)

    def __str__(self) -> str:
        return f"sha256:{self.hex}"

    @property
    def short(self) -> str:
        return self.hex[:12]


def registry_problem(domain: str) -> Optional[str]:
    """Why ``domain`` is not a registry ``host[:port]``, or None. Checked before any URL is
    built from it: requests and urllib fail on a bad port or IPv6 address with errors of their
    own, and urllib3 quietly takes port 0 for 80. Credentials are refused without being
    quoted, as messages end up in batch logs."""
    if "@" in domain:
        return "credentials do not belong in a registry name (use 'ucore login')"
    if domain.endswith("]") or ":" not in domain:
        host, sep, port = domain, "", ""
    else:
        host, sep, port = domain.rpartition(":")
    if sep and not (_PORT.fullmatch(port) and 0 < int(port) < 1 << 16):
        return f"bad port in registry {domain!r}"
    if host.startswith("[") and host.endswith("]"):
        import ipaddress

        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return f"bad registry host {domain!r}"
        return None
    if not all(_DOMAIN_COMPONENT.fullmatch(part) for part in host.split(".")):
        return f"bad registry host {domain!r}"
    return None


def names_registry(text: str) -> bool:
    """Whether a reference's first component is a registry host (Docker's rule: it holds a
    dot or a colon, is ``localhost``, or has upper-case letters)."""
    first, sep, _ = text.partition("/")
    return bool(sep) and (
        "." in first or ":" in first or first == "localhost" or first != first.lower()
    )


def split_registry(value: str) -> tuple[Optional[str], str]:
    """``http://host:port/v2/`` → ("http", "host:port"); a bare host has no scheme. Docker
    Hub's aliases become ``docker.io``."""
    scheme = None
    for prefix in ("https://", "http://"):
        if value.startswith(prefix):
            scheme, value = prefix[:-3], value[len(prefix) :]
    host = value.strip().strip("/").split("/", 1)[0]
    if not host:
        raise UsageError(f"invalid registry {value!r}")
    if host in (DOCKER_HUB_INDEX, DOCKER_HUB_API):
        host = DOCKER_HUB
    return scheme, host


def _registry(_: object, __: attrs.Attribute[str], value: object) -> None:
    problem = registry_problem(value) if isinstance(value, str) else "not a string"
    if problem:
        raise UsageError(problem)


def _repository(_: object, __: attrs.Attribute[str], value: object) -> None:
    if (
        not isinstance(value, str)
        or len(value) > _MAX_NAME
        or not all(_PATH_COMPONENT.fullmatch(c) for c in value.split("/"))
    ):
        raise UsageError(
            "repository names are lower-case letters, digits and separators (. _ __ -) in"
            " /-separated components"
        )


def _tag(_: object, __: attrs.Attribute[Optional[str]], value: object) -> None:
    if value is not None and not (isinstance(value, str) and _TAG.fullmatch(value)):
        raise UsageError(f"bad tag {value!r}")


@attrs.frozen
class ImageRef:
    """A fully qualified image reference: ``registry/repository[:tag][@digest]``.

    ``parse`` applies Docker's defaults (``ubuntu`` is ``docker.io/library/ubuntu:latest``), or a
    different default registry when the user configured one; the validators hold Docker's
    grammar for each part however the value is made.
    """

    registry: str = attrs.field(validator=_registry)
    repository: str = attrs.field(validator=_repository)
    tag: Optional[str] = attrs.field(default=None, validator=_tag)
    digest: Optional[Digest] = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(Digest))
    )

    @classmethod
    def parse(cls, text: str, default_registry: str = DOCKER_HUB) -> ImageRef:
        if not text or len(text) > 512 or text != text.strip():
            raise UsageError(f"invalid reference {text!r}")
        if "/" in text and "@" in text.partition("/")[0]:
            raise UsageError(
                "invalid reference: credentials do not belong in an image name (use 'ucore login')"
            )
        name, at, digest_text = text.partition("@")
        digest = None
        if at:
            try:
                digest = Digest.parse(digest_text)
            except IntegrityError as exc:
                raise UsageError(f"invalid reference {text!r}: {exc}") from None
        tag = None
        slash = name.rfind("/")
        colon = name.rfind(":")
        if colon > slash:
            name, tag = name[:colon], name[colon + 1 :]
        first, _, rest = name.partition("/")
        if names_registry(name):
            registry, path = first, rest
        else:
            problem = registry_problem(default_registry)
            if problem:
                raise UsageError(
                    f"invalid default registry (--registry, UCORE_REGISTRY): {problem}"
                )
            registry, path = default_registry, name
        if registry in (DOCKER_HUB_INDEX, DOCKER_HUB_API):
            registry = DOCKER_HUB
        if registry == DOCKER_HUB and "/" not in path:
            path = f"library/{path}"
        if tag is None and digest is None:
            tag = "latest"
        try:
            return cls(registry, path, tag, digest)
        except UsageError as exc:  # a validator's rule, said of the text the user gave
            raise UsageError(f"invalid reference {text!r}: {exc}") from None

    @property
    def name(self) -> str:
        """``registry/repository``, the key a store and a registry both understand."""
        return f"{self.registry}/{self.repository}"

    @property
    def familiar(self) -> str:
        """The short form Docker users type (``ubuntu:24.04``), used for display."""
        repo = self.repository
        if self.registry == DOCKER_HUB:
            return repo.removeprefix("library/") + self._suffix()
        return self.name + self._suffix()

    def _suffix(self) -> str:
        out = f":{self.tag}" if self.tag else ""
        return out + (f"@{self.digest}" if self.digest else "")

    def with_digest(self, digest: Digest) -> ImageRef:
        return attrs.evolve(self, digest=digest)

    def __str__(self) -> str:
        return self.name + self._suffix()


_ARCH_ALIASES = {
    "x86_64": ("amd64", None),
    "amd64": ("amd64", None),
    "aarch64": ("arm64", None),
    "arm64": ("arm64", None),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i386": ("386", None),
    "i686": ("386", None),
    "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
}


def _platform_part(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None and attribute.name == "variant":
        return
    if not isinstance(value, str) or not _PLATFORM_PART.fullmatch(value):
        raise UsageError(f"invalid platform {attribute.name} {value!r}")


@attrs.frozen
class Platform:
    """An OCI platform (os/architecture[/variant])."""

    os: str = attrs.field(validator=_platform_part)
    architecture: str = attrs.field(validator=_platform_part)
    variant: Optional[str] = attrs.field(default=None, validator=_platform_part)

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(_PLATFORM_PART.fullmatch(p) for p in parts):
            raise UsageError(f"invalid platform {text!r}: expected os/arch[/variant]")
        arch, variant = _ARCH_ALIASES.get(parts[1], (parts[1], None))
        if len(parts) == 3:
            variant = parts[2]
        return cls(parts[0], arch, variant)

    @classmethod
    def host(cls) -> Platform:
        import platform

        arch, variant = _ARCH_ALIASES.get(platform.machine(), (platform.machine(), None))
        return cls("linux", arch, variant)

    @classmethod
    def from_json(cls, data: Any) -> Optional[Platform]:
        """The platform an index entry or image config states, or None where it states none
        that :meth:`parse` accepts: the store records it as text and parses it back on every
        load, so one such as ``linux/AMD 64`` would make the image, and ``rmi`` of any image
        (which loads them all), fail from then on."""
        if not isinstance(data, dict):
            return None
        os_, arch, variant = data.get("os"), data.get("architecture"), data.get("variant")
        if not isinstance(os_, str) or not isinstance(arch, str):
            return None
        variant = variant if isinstance(variant, str) and variant else None
        named = (os_, arch) if variant is None else (os_, arch, variant)
        if not all(_PLATFORM_PART.fullmatch(p) for p in named):
            return None
        return cls(os_, arch, variant)

    def matches(self, other: Platform) -> bool:
        """Whether an image built for ``other`` satisfies a request for ``self``.

        A request without a variant takes any variant; arm64's "v8" is its implied default.
        """
        if (self.os, self.architecture) != (other.os, other.architecture):
            return False
        if self.variant is None:
            return True
        implied = {"arm64": "v8"}.get(other.architecture)
        return self.variant == (other.variant or implied)

    def __str__(self) -> str:
        base = f"{self.os}/{self.architecture}"
        return f"{base}/{self.variant}" if self.variant else base


def _size(_: object, __: attrs.Attribute[int], value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise IntegrityError(f"descriptor has invalid size {value!r}")


def _media_type(_: object, __: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str):
        raise IntegrityError("descriptor has invalid mediaType")


def _urls(value: object) -> tuple[str, ...]:
    """Foreign URLs as a tuple; anything but a list of strings counts as none (the digest is
    what gets verified, so a malformed hint is dropped rather than refused)."""
    if isinstance(value, (list, tuple)) and all(isinstance(u, str) for u in value):
        return tuple(value)
    return ()


def _annotations(value: object) -> dict[str, str]:
    """Annotations as strings; anything but a mapping counts as none."""
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


@attrs.frozen
class Descriptor:
    """An OCI content descriptor, validated: the digest and size are what gets verified."""

    media_type: str = attrs.field(validator=_media_type)
    digest: Digest = attrs.field(validator=attrs.validators.instance_of(Digest))
    size: int = attrs.field(validator=_size)
    platform: Optional[Platform] = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(Platform))
    )
    urls: tuple[str, ...] = attrs.field(default=(), converter=_urls)
    annotations: dict[str, str] = attrs.field(
        factory=dict, converter=_annotations, eq=False, hash=False
    )

    @classmethod
    def from_json(cls, data: Any, max_size: int) -> Descriptor:
        if not isinstance(data, dict):
            raise IntegrityError("malformed descriptor in manifest")
        size = data.get("size")
        if isinstance(size, int) and not isinstance(size, bool) and size > max_size:
            raise IntegrityError(f"descriptor size {size} exceeds the limit of {max_size} bytes")
        return cls(
            media_type=data.get("mediaType", ""),
            digest=Digest.parse(data.get("digest")),
            size=size,  # type: ignore[arg-type]  # the validator refuses what is not an int
            platform=Platform.from_json(data.get("platform")),
            urls=data.get("urls") or (),  # the converter keeps a list of strings
            annotations=data.get("annotations") or {},
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": str(self.digest),
            "size": self.size,
        }
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


def _descriptors(value: object) -> tuple[Descriptor, ...]:
    layers = tuple(value) if isinstance(value, (list, tuple)) else None
    if layers is None or not all(isinstance(d, Descriptor) for d in layers):
        raise IntegrityError(f"image layers must be descriptors, not {value!r}")
    return layers


_DIGEST = attrs.validators.instance_of(Digest)


@attrs.frozen
class Image:
    """An image in the local store: a platform-specific manifest, its config and its layers."""

    ref: ImageRef = attrs.field(validator=attrs.validators.instance_of(ImageRef))
    manifest_digest: Digest = attrs.field(validator=_DIGEST)
    config_digest: Digest = attrs.field(validator=_DIGEST)
    layers: tuple[Descriptor, ...] = attrs.field(converter=_descriptors)
    platform: Optional[Platform] = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(Platform))
    )
    #: The index the manifest was chosen from, when the reference pointed at one.
    index_digest: Optional[Digest] = attrs.field(
        default=None, validator=attrs.validators.optional(_DIGEST)
    )

    @property
    def id(self) -> str:
        """Docker's image id: the config digest."""
        return str(self.config_digest)
