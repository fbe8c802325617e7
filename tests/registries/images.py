"""Build container images in memory: layers, configs, manifests and indexes.

Everything is deterministic from a string seed, so a test can rebuild the
exact bytes it expects a client to pull.  Layers are gzip'd tars holding one
file of pseudo-random bytes (``random.Random(seed).randbytes``), compressed
at gzip level 0 ("stored" deflate blocks: valid gzip, and tens of MB build in
a fraction of a second).  Both Docker v2 schema 2 and OCI media types are
supported, single-platform or multi-platform (Docker manifest list / OCI
image index over linux/amd64 and linux/arm64/v8).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import random
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from functools import cached_property
from typing import Literal

MediaFamily = Literal["oci", "docker"]

CREATED = "2024-01-01T00:00:00Z"
"""The fixed creation time written into configs (keeps builds reproducible)."""


@dataclass(frozen=True)
class MediaTypes:
    """The media types of one manifest family."""

    manifest: str
    index: str
    config: str
    layer: str


MEDIA_TYPES: dict[MediaFamily, MediaTypes] = {
    "oci": MediaTypes(
        manifest="application/vnd.oci.image.manifest.v1+json",
        index="application/vnd.oci.image.index.v1+json",
        config="application/vnd.oci.image.config.v1+json",
        layer="application/vnd.oci.image.layer.v1.tar+gzip",
    ),
    "docker": MediaTypes(
        manifest="application/vnd.docker.distribution.manifest.v2+json",
        index="application/vnd.docker.distribution.manifest.list.v2+json",
        config="application/vnd.docker.container.image.v1+json",
        layer="application/vnd.docker.image.rootfs.diff.tar.gzip",
    ),
}
INDEX_MEDIA_TYPES = frozenset(m.index for m in MEDIA_TYPES.values())
MANIFEST_MEDIA_TYPES = frozenset(m.manifest for m in MEDIA_TYPES.values())


def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(value: object) -> bytes:
    """Compact, key-sorted JSON: the exact bytes that get pushed and digested."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Platform:
    """An ``os/architecture[/variant]`` platform."""

    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Parse ``linux/arm64/v8`` or ``linux/amd64``."""
        os_, architecture, *variant = text.split("/")
        return cls(os_, architecture, variant[0] if variant else None)

    def as_json(self) -> dict[str, str]:
        """The ``platform`` object of an index entry."""
        value = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            value["variant"] = self.variant
        return value

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


DEFAULT_PLATFORMS: tuple[Platform, ...] = (
    Platform("linux", "amd64"),
    Platform("linux", "arm64", "v8"),
)


@dataclass(frozen=True)
class Blob:
    """A content-addressed blob (config or layer)."""

    media_type: str
    data: bytes

    @cached_property
    def digest(self) -> str:
        """``sha256:<hex>`` of :attr:`data`."""
        return sha256_digest(self.data)

    @property
    def size(self) -> int:
        """Length of :attr:`data` in bytes."""
        return len(self.data)

    def descriptor(self) -> dict[str, object]:
        """The OCI descriptor (``mediaType``, ``digest``, ``size``)."""
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.digest[:19]}…, {self.size} bytes, {self.media_type})"


@dataclass(frozen=True, repr=False)
class Layer(Blob):
    """A gzip'd tar layer blob."""

    diff_id: str
    """Digest of the uncompressed tar (what the config's ``rootfs.diff_ids`` lists)."""


@functools.lru_cache(maxsize=16)
def build_layer(size: int, seed: str, media_type: str = MEDIA_TYPES["oci"].layer) -> Layer:
    """A layer whose tar holds one file of ``size`` random bytes derived from ``seed``.

    The blob is a little bigger than ``size`` (tar and gzip framing, ~1.5 KiB
    plus 5 bytes per 64 KiB).  Recent builds are cached (layers are
    immutable), so building the same layer again is free.
    """
    if size < 0:
        raise ValueError("layer size must be >= 0")
    rng = random.Random(seed)
    chunk = 64 * 1024 * 1024  # randbytes() cannot make more than 256 MiB at once
    payload = b"".join(rng.randbytes(min(chunk, size - start)) for start in range(0, size, chunk))
    info = tarfile.TarInfo("regcache-test/payload.bin")
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    info.uname = info.gname = "root"
    padding = b"\0" * (-size % tarfile.BLOCKSIZE)
    tar = info.tobuf(format=tarfile.USTAR_FORMAT) + payload + padding + b"\0" * (2 * tarfile.BLOCKSIZE)
    data = gzip.compress(tar, compresslevel=0, mtime=0)
    return Layer(media_type=media_type, data=data, diff_id=sha256_digest(tar))


@dataclass(frozen=True)
class ImageManifest:
    """A single-platform image manifest with its config and layers."""

    media_type: str
    data: bytes
    """The manifest JSON exactly as pushed."""
    config: Blob
    layers: tuple[Layer, ...]
    platform: Platform

    @cached_property
    def digest(self) -> str:
        """Digest of the manifest bytes."""
        return sha256_digest(self.data)

    @property
    def size(self) -> int:
        """Length of the manifest bytes."""
        return len(self.data)

    @property
    def blobs(self) -> tuple[Blob, ...]:
        """The config then the layers."""
        return (self.config, *self.layers)

    def descriptor(self) -> dict[str, object]:
        """The entry describing this manifest in an index."""
        return {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
            "platform": self.platform.as_json(),
        }

    def __repr__(self) -> str:
        return f"ImageManifest({self.platform}, {self.digest[:19]}…, {len(self.layers)} layers)"


def build_manifest(
    layer_sizes: Sequence[int],
    *,
    seed: str,
    media_type: MediaFamily = "oci",
    platform: Platform = DEFAULT_PLATFORMS[0],
) -> ImageManifest:
    """Build a single-platform image: one layer per size, a config and a manifest."""
    types = MEDIA_TYPES[media_type]
    layers = tuple(
        build_layer(size, f"{seed}|{platform}|{index}", types.layer) for index, size in enumerate(layer_sizes)
    )
    config_json: dict[str, object] = {
        **platform.as_json(),
        "created": CREATED,
        "config": {"Labels": {"org.regcache.test.seed": seed}},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [
            {"created": CREATED, "created_by": f"regcache test layer {i}"} for i in range(len(layers))
        ],
    }
    config = Blob(types.config, canonical_json(config_json))
    manifest = {
        "schemaVersion": 2,
        "mediaType": types.manifest,
        "config": config.descriptor(),
        "layers": [layer.descriptor() for layer in layers],
    }
    return ImageManifest(types.manifest, canonical_json(manifest), config, layers, platform)


@dataclass(frozen=True)
class Image:
    """A built image: one manifest, or an index/manifest list over several.

    Attributes:
        media_type: the media type of the top-level manifest (or index).
        manifest: the top-level manifest bytes, exactly as pushed.
        manifests: the single-platform manifests: the image itself when it is
            single-arch, else one per platform, in index order.
    """

    media_type: str
    manifest: bytes
    manifests: tuple[ImageManifest, ...]

    @cached_property
    def digest(self) -> str:
        """Digest of the top-level manifest."""
        return sha256_digest(self.manifest)

    @property
    def is_index(self) -> bool:
        """Whether this is an OCI index or a Docker manifest list."""
        return self.media_type in INDEX_MEDIA_TYPES

    @property
    def layers(self) -> tuple[Layer, ...]:
        """Every layer of every platform."""
        return tuple(layer for m in self.manifests for layer in m.layers)

    @property
    def configs(self) -> tuple[Blob, ...]:
        """The config blob of every platform."""
        return tuple(m.config for m in self.manifests)

    @cached_property
    def blobs(self) -> dict[str, Blob]:
        """Every config and layer blob by digest."""
        return {blob.digest: blob for m in self.manifests for blob in m.blobs}

    @property
    def all_manifests(self) -> dict[str, bytes]:
        """Every manifest's bytes by digest: the top level and, for an index, its children."""
        found = {self.digest: self.manifest}
        found.update((m.digest, m.data) for m in self.manifests)
        return found

    def blob(self, digest: str) -> Blob:
        """The config or layer with ``digest``."""
        return self.blobs[digest]

    def for_platform(self, platform: str | Platform) -> ImageManifest:
        """The manifest for ``platform`` (e.g. ``"linux/arm64"``; the variant may be omitted)."""
        wanted = Platform.parse(platform) if isinstance(platform, str) else platform
        for m in self.manifests:
            if (m.platform.os, m.platform.architecture) == (wanted.os, wanted.architecture) and (
                wanted.variant is None or wanted.variant == m.platform.variant
            ):
                return m
        raise KeyError(f"no manifest for {platform} in {[str(m.platform) for m in self.manifests]}")


def build_image(
    layers: Sequence[int] = (4096,),
    *,
    seed: str = "regcache",
    media_type: MediaFamily = "oci",
    multiarch: bool = False,
    platforms: Iterable[Platform] = DEFAULT_PLATFORMS,
) -> Image:
    """Build an image with one layer of each of ``layers`` sizes per platform.

    ``multiarch`` builds an OCI index (``media_type="oci"``) or a Docker
    manifest list (``"docker"``) over ``platforms``, each platform getting its
    own layer contents; otherwise a single linux/amd64 manifest.
    """
    if media_type not in MEDIA_TYPES:
        raise ValueError(f"media_type must be 'oci' or 'docker', not {media_type!r}")
    if not multiarch:
        single = build_manifest(layers, seed=seed, media_type=media_type)
        return Image(single.media_type, single.data, (single,))
    children = tuple(build_manifest(layers, seed=seed, media_type=media_type, platform=p) for p in platforms)
    index_type = MEDIA_TYPES[media_type].index
    index = {
        "schemaVersion": 2,
        "mediaType": index_type,
        "manifests": [child.descriptor() for child in children],
    }
    return Image(index_type, canonical_json(index), children)


@dataclass(frozen=True)
class PushedImage(Image):
    """An :class:`Image` as pushed to ``registry/repository:tag``."""

    registry: str
    """``127.0.0.1:PORT`` of the registry it was pushed to."""
    repository: str
    tag: str

    @classmethod
    def of(cls, image: Image, registry: str, repository: str, tag: str) -> PushedImage:
        """Attach a location to a built image."""
        built = {f.name: getattr(image, f.name) for f in fields(Image)}
        return cls(**built, registry=registry, repository=repository, tag=tag)

    @property
    def reference(self) -> str:
        """``127.0.0.1:PORT/repository:tag``."""
        return f"{self.registry}/{self.repository}:{self.tag}"

    @property
    def digest_reference(self) -> str:
        """``127.0.0.1:PORT/repository@sha256:...``."""
        return f"{self.registry}/{self.repository}@{self.digest}"

    def __repr__(self) -> str:
        return f"PushedImage({self.reference}, {self.media_type}, {self.digest[:19]}…)"
