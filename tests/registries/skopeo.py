"""Pull images with the real ``skopeo`` client and read the OCI layouts it writes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.registries.images import INDEX_MEDIA_TYPES, MEDIA_TYPES, Image
from tests.registries.server import INSTALL_HINT

SKOPEO_ENV = "REGCACHE_SKOPEO"
"""Environment variable naming another skopeo binary to use."""

REF_NAME = "org.opencontainers.image.ref.name"


class SkopeoError(RuntimeError):
    """skopeo exited non-zero; :attr:`stderr` says why."""

    def __init__(self, args: list[str], returncode: int, stderr: str) -> None:
        super().__init__(f"{' '.join(args)} exited {returncode}:\n{stderr}")
        self.returncode = returncode
        self.stderr = stderr


def skopeo_binary() -> str:
    """Return the skopeo binary (``$REGCACHE_SKOPEO`` or from ``PATH``).

    Raises:
        FileNotFoundError: with an install hint when it is missing.
    """
    found = os.environ.get(SKOPEO_ENV) or shutil.which("skopeo")
    if not found or not os.access(found, os.X_OK):
        raise FileNotFoundError(f"skopeo is not installed ({found or 'not on PATH'}): run `{INSTALL_HINT}`")
    return found


@dataclass(frozen=True)
class OciLayout:
    """An OCI image layout directory (``oci-layout``, ``index.json``, ``blobs/``)."""

    path: Path

    def index(self) -> dict[str, Any]:
        """The parsed ``index.json``."""
        index: dict[str, Any] = json.loads((self.path / "index.json").read_bytes())
        return index

    def blob_path(self, digest: str) -> Path:
        """Where the blob with ``digest`` is stored."""
        algorithm, _, encoded = digest.partition(":")
        return self.path / "blobs" / algorithm / encoded

    def has_blob(self, digest: str) -> bool:
        """Whether the layout holds ``digest``."""
        return self.blob_path(digest).is_file()

    def blob(self, digest: str) -> bytes:
        """The bytes of blob ``digest``."""
        return self.blob_path(digest).read_bytes()

    def blob_digests(self) -> set[str]:
        """Every blob digest present (manifests included)."""
        return {
            f"{algorithm.name}:{blob.name}"
            for algorithm in (self.path / "blobs").iterdir()
            for blob in algorithm.iterdir()
        }

    def descriptor(self, tag: str) -> dict[str, Any]:
        """The ``index.json`` entry annotated with ``tag``."""
        for entry in self.index()["manifests"]:
            if entry.get("annotations", {}).get(REF_NAME) == tag:
                return dict(entry)
        raise KeyError(f"no {tag!r} in {self.path / 'index.json'}")

    def manifest_bytes(self, tag: str) -> bytes:
        """The raw manifest (or index) tagged ``tag``."""
        return self.blob(str(self.descriptor(tag)["digest"]))

    def manifest(self, tag: str) -> dict[str, Any]:
        """The parsed manifest (or index) tagged ``tag``."""
        manifest: dict[str, Any] = json.loads(self.manifest_bytes(tag))
        return manifest

    def image_manifests(self, tag: str) -> list[dict[str, Any]]:
        """The single-platform manifests under ``tag``: itself, or an index's children present here."""
        top = self.manifest(tag)
        if top.get("mediaType") not in INDEX_MEDIA_TYPES and "manifests" not in top:
            return [top]
        children = top["manifests"]
        return [json.loads(self.blob(c["digest"])) for c in children if self.has_blob(c["digest"])]

    def layer_digests(self, tag: str) -> list[str]:
        """The layer digests of every platform under ``tag``, in manifest order."""
        return [layer["digest"] for m in self.image_manifests(tag) for layer in m["layers"]]


class Skopeo:
    """Runs ``skopeo`` against plain-HTTP 127.0.0.1 registries."""

    def __init__(self, binary: str | None = None, *, timeout: float = 120.0) -> None:
        self.binary = binary or skopeo_binary()
        self.timeout = timeout

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``skopeo --insecure-policy ARGS``; raise :class:`SkopeoError` on failure."""
        command = [self.binary, "--insecure-policy", *args]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=self.timeout, stdin=subprocess.DEVNULL
        )
        if result.returncode != 0:
            raise SkopeoError(command, result.returncode, result.stderr)
        return result

    def copy_to_oci(
        self,
        reference: str,
        destination: Path,
        tag: str = "latest",
        *,
        credentials: tuple[str, str] | None = None,
        all_platforms: bool = False,
    ) -> OciLayout:
        """``skopeo copy docker://REFERENCE oci:DESTINATION:TAG``; return the layout.

        ``reference`` is ``host:port/name:tag`` (or ``@digest``).  Without
        ``credentials`` skopeo is told to pull anonymously (no auth file).
        """
        auth = ["--src-creds", ":".join(credentials)] if credentials else ["--src-no-creds"]
        self.run(
            "copy",
            "--src-tls-verify=false",
            *auth,
            *(["--all"] if all_platforms else []),
            f"docker://{reference}",
            f"oci:{destination}:{tag}",
        )
        return OciLayout(destination)


def assert_pulled(layout: OciLayout, tag: str, image: Image) -> None:
    """Assert ``layout`` holds ``image`` under ``tag``, layers byte for byte.

    OCI images must come through unchanged (manifests, configs, layers).
    Docker images are converted by skopeo when written to an OCI layout:
    manifests get OCI media types and configs are re-serialized, so those
    are compared by content.  Use ``all_platforms=True`` copies for indexes.
    """
    assert layout.layer_digests(tag) == [layer.digest for layer in image.layers]
    for layer in image.layers:
        assert layout.blob(layer.digest) == layer.data, layer
    oci = MEDIA_TYPES["oci"]
    if image.media_type in (oci.manifest, oci.index):  # no conversion: all kept byte for byte
        assert layout.manifest_bytes(tag) == image.manifest
        for child in image.manifests:
            assert layout.blob(child.digest) == child.data
            assert layout.blob(child.config.digest) == child.config.data
    else:  # Docker → OCI: skopeo rewrites manifests and re-serializes configs
        pulled = layout.image_manifests(tag)
        assert [m["mediaType"] for m in pulled] == [oci.manifest] * len(image.manifests)
        for manifest, child in zip(pulled, image.manifests, strict=True):
            config = json.loads(layout.blob(manifest["config"]["digest"]))
            assert config == json.loads(child.config.data)
    if image.is_index:
        platforms = [entry["platform"] for entry in layout.manifest(tag)["manifests"]]
        assert platforms == [m.platform.as_json() for m in image.manifests]
