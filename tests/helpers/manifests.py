"""A minimal OCI image manifest (no layers) and its config blob, for tests that serve one by hand."""

from __future__ import annotations

import hashlib
import json

from regcache.proxy.core.oci import OCI_MANIFEST

CONFIG = b'{"architecture":"amd64","os":"linux"}'
MANIFEST = json.dumps({
    "schemaVersion": 2, "mediaType": OCI_MANIFEST,
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
               "digest": "sha256:" + hashlib.sha256(CONFIG).hexdigest(), "size": len(CONFIG)},
    "layers": []}).encode()
