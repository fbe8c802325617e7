"""A minimal OCI distribution client used to push (and inspect) test content.

:class:`RegistryClient` answers the registry's ``WWW-Authenticate``
challenges itself: HTTP Basic with the given credentials, or Docker token
auth (fetching a token from the challenge's realm, with the credentials when
there are any, and caching it per repository).  :func:`push_image` uploads
an :class:`~tests.registries.images.Image` with the standard push flow:
``POST /v2/<name>/blobs/uploads/`` then ``PUT <location>?digest=``, child
manifests by digest, then the top-level manifest by tag.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

import httpx

from tests.registries.images import (
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    Blob,
    Image,
    PushedImage,
)

if TYPE_CHECKING:
    from tests.registries.server import RegistryServer

_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')

PULL = ("pull",)
PUSH = ("pull", "push")


class PushError(RuntimeError):
    """The registry refused or mangled a push."""


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """Split ``Bearer realm="...",service="..."`` into ``("bearer", {...})``."""
    scheme, _, params = header.strip().partition(" ")
    return scheme.lower(), dict(_CHALLENGE_PARAM.findall(params))


class RegistryClient:
    """A small synchronous registry API client (``/v2/...``) with auth handling.

    Args:
        url: the registry base URL, ``http://127.0.0.1:PORT``.
        credentials: ``(username, password)`` or None for anonymous access.
    """

    def __init__(
        self, url: str, credentials: tuple[str, str] | None = None, *, timeout: float = 60.0
    ) -> None:
        self.url = url.rstrip("/")
        self.credentials = credentials
        # verify=False: test registries are plain HTTP, and skipping the CA
        # bundle makes a client ~40x cheaper to create.
        self._http = httpx.Client(timeout=timeout, verify=False)
        self._basic = False
        self._tokens: dict[str, tuple[frozenset[str], str]] = {}

    @classmethod
    def for_server(cls, server: RegistryServer) -> RegistryClient:
        """A client for ``server`` using its credentials."""
        return cls(server.url, server.credentials)

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- requests & auth --------------------------------------------------

    def request(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        repository: str | None = None,
        actions: Iterable[str] = PULL,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        follow_redirects: bool = False,
    ) -> httpx.Response:
        """Send a request (``url`` absolute or a ``/v2/...`` path), answering one auth challenge.

        ``actions`` are what a token for ``repository`` should allow (the
        challenge's own scope is always included).
        """
        target = httpx.URL(self.url).join(url)
        wanted = frozenset(actions)

        def send() -> httpx.Response:
            return self._http.request(
                method,
                target,
                content=content,
                headers={**(headers or {}), **self._auth_headers(repository, wanted)},
                follow_redirects=follow_redirects,
            )

        response = send()
        if response.status_code != 401 or "www-authenticate" not in response.headers:
            return response
        if not self._answer(response.headers["www-authenticate"], repository, wanted):
            return response
        return send()

    def _auth_headers(self, repository: str | None, wanted: frozenset[str]) -> dict[str, str]:
        cached = self._tokens.get(repository or "")
        if cached is not None and wanted <= cached[0]:
            return {"Authorization": f"Bearer {cached[1]}"}
        if self._basic and self.credentials is not None:
            user_pass = ":".join(self.credentials).encode()
            return {"Authorization": "Basic " + base64.b64encode(user_pass).decode()}
        return {}

    def _answer(self, header: str, repository: str | None, wanted: frozenset[str]) -> bool:
        """Obtain what the challenge asks for; False when there is nothing to try."""
        scheme, params = parse_challenge(header)
        if scheme == "basic":
            if self.credentials is None or self._basic:
                return False
            self._basic = True
            return True
        if scheme != "bearer" or "realm" not in params:
            return False
        query = {"service": params.get("service", "")}
        actions = set(wanted)
        if repository:
            for scope in params.get("scope", "").split():
                actions.update(scope.rpartition(":")[2].split(","))
            query["scope"] = f"repository:{repository}:{','.join(sorted(actions))}"
        elif "scope" in params:
            query["scope"] = params["scope"]
        response = self._http.get(params["realm"], params=query, auth=self.credentials)
        if response.status_code != 200:
            return False
        body = response.json()
        token = str(body.get("token") or body["access_token"])
        self._tokens[repository or ""] = (frozenset(actions), token)
        return True

    # -- API --------------------------------------------------------------

    def blob_exists(self, repository: str, digest: str, *, actions: Iterable[str] = PULL) -> bool:
        """``HEAD /v2/<repository>/blobs/<digest>`` is 200."""
        path = f"/v2/{repository}/blobs/{digest}"
        return self.request("HEAD", path, repository=repository, actions=actions).status_code == 200

    def get_blob(self, repository: str, digest: str) -> bytes:
        """Download a blob (following redirects)."""
        path = f"/v2/{repository}/blobs/{digest}"
        response = self.request("GET", path, repository=repository, follow_redirects=True)
        response.raise_for_status()
        return response.content

    def get_manifest(self, repository: str, reference: str, accept: Iterable[str] = ()) -> httpx.Response:
        """``GET /v2/<repository>/manifests/<reference>`` (all known media types accepted by default)."""
        types = list(accept) or sorted(INDEX_MEDIA_TYPES | MANIFEST_MEDIA_TYPES)
        path = f"/v2/{repository}/manifests/{reference}"
        return self.request("GET", path, repository=repository, headers={"Accept": ", ".join(types)})

    def push_blob(self, repository: str, blob: Blob) -> None:
        """Upload ``blob`` unless the repository already has it (POST then PUT ?digest=)."""
        if self.blob_exists(repository, blob.digest, actions=PUSH):
            return
        started = self.request(
            "POST", f"/v2/{repository}/blobs/uploads/", repository=repository, actions=PUSH
        )
        if started.status_code != 202 or "location" not in started.headers:
            raise PushError(f"starting upload of {blob.digest} to {repository}: {_describe(started)}")
        location = httpx.URL(self.url).join(started.headers["location"])
        finished = self.request(
            "PUT",
            location.copy_merge_params({"digest": blob.digest}),
            repository=repository,
            actions=PUSH,
            content=blob.data,
            headers={"Content-Type": "application/octet-stream"},
        )
        if finished.status_code != 201:
            raise PushError(f"uploading {blob.digest} to {repository}: {_describe(finished)}")

    def push_manifest(self, repository: str, reference: str, media_type: str, data: bytes) -> str:
        """PUT a manifest under a tag or digest; return the digest the registry computed."""
        response = self.request(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            repository=repository,
            actions=PUSH,
            content=data,
            headers={"Content-Type": media_type},
        )
        if response.status_code != 201:
            raise PushError(f"pushing manifest {repository}:{reference}: {_describe(response)}")
        return str(response.headers.get("docker-content-digest", ""))

    def delete_manifest(self, repository: str, digest: str) -> None:
        """Delete a manifest by digest (the registry runs with deletes enabled)."""
        path = f"/v2/{repository}/manifests/{digest}"
        response = self.request("DELETE", path, repository=repository, actions=("pull", "push", "delete"))
        if response.status_code != 202:
            raise PushError(f"deleting {repository}@{digest}: {_describe(response)}")


def _describe(response: httpx.Response) -> str:
    return f"HTTP {response.status_code} {response.text[:500]}"


def push_image(
    image: Image,
    registry: RegistryServer,
    repository: str,
    tag: str,
    *,
    client: RegistryClient | None = None,
) -> PushedImage:
    """Push ``image`` to ``registry`` as ``repository:tag`` and describe the result.

    Blobs first, then each platform manifest by digest (for an index), then
    the top-level manifest by tag.  Raises :class:`PushError` on refusal or
    if the registry computes a different manifest digest.
    """
    own_client = client is None
    api = client or RegistryClient.for_server(registry)
    try:
        for blob in image.blobs.values():
            api.push_blob(repository, blob)
        if image.is_index:
            for child in image.manifests:
                _check(
                    child.digest, api.push_manifest(repository, child.digest, child.media_type, child.data)
                )
        _check(image.digest, api.push_manifest(repository, tag, image.media_type, image.manifest))
    finally:
        if own_client:
            api.close()
    return PushedImage.of(image, registry.host, repository, tag)


def _check(expected: str, actual: str) -> None:
    if actual and actual != expected:
        raise PushError(f"registry stored manifest {expected} as {actual}")
