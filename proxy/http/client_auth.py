"""Client authentication in the registry app: HTTP Basic with a client token, and its repository scope.

Once a token exists (or the server listens beyond loopback without ``--allow-anonymous``), every
``/v2/`` request must carry ``Authorization: Basic NAME:PASSWORD``; without it the answer is 401
with ``WWW-Authenticate: Basic realm="regcache"``, which docker, podman and skopeo answer by
retrying with the credentials they were given. Verifying a password costs a scrypt (about 50 ms),
so successful verifications are kept in memory for a minute, keyed by a keyed hash of the
credentials; the token table is reloaded whenever another connection changed the database.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import secrets
import sqlite3
import time
from datetime import datetime, timezone

import anyio
from starlette.requests import Request

from regcache.proxy.core.tokens import ClientToken, verify_password
from regcache.proxy.http.errors import RegistryError
from regcache.proxy.state.store import AsyncStateStore

log = logging.getLogger("regcache.auth")

REALM = "regcache"
#: how long a verified NAME:PASSWORD is trusted without recomputing its hash
VERIFIED_TTL = 60.0
#: how often a token's last_used time is written while it is in use
LAST_USED_INTERVAL = 60.0
#: at most this many verified credentials are remembered (then the expired ones are dropped)
MAX_VERIFIED = 4096
#: longer Authorization headers are refused unread
MAX_HEADER = 4096
CHALLENGE = {"WWW-Authenticate": f'Basic realm="{REALM}"'}


def unauthorized(message: str) -> RegistryError:
    return RegistryError(401, "UNAUTHORIZED", message, headers=dict(CHALLENGE))


def parse_basic(header: str) -> tuple[str, str] | None:
    """(name, password) from ``Basic BASE64``; None for another scheme or a malformed value."""
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic" or len(header) > MAX_HEADER:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    name, sep, password = decoded.partition(":")
    return (name, password) if sep else None


class ClientAuth:
    """Who a request is (a client token, or anonymous) and whether it may pull a repository."""

    def __init__(self, state: AsyncStateStore, require: bool = False) -> None:
        self.state = state
        #: refuse anonymous requests even when no token exists (a server exposed beyond loopback)
        self.require = require
        self._version: int | None = None
        self._tokens: dict[str, ClientToken] = {}
        self._verified: dict[bytes, tuple[float, str, str]] = {}  # key -> (until, name, password hash)
        self._touched: dict[str, float] = {}
        self._key = secrets.token_bytes(32)
        self._kdf = anyio.CapacityLimiter(2)  # scrypt takes 16 MiB each: bound concurrent verifications

    async def refresh(self) -> None:
        """Reload the token table when another connection committed a change."""
        version = await self.state.data_version()
        if version != self._version:
            version, tokens = await self.state.run(lambda s: (s.data_version(), s.client_tokens()))
            self._tokens = {t.name: t for t in tokens}
            self._version = version

    async def authenticate(self, request: Request) -> ClientToken | None:
        """The request's token; None when anonymous pulls are allowed; 401 UNAUTHORIZED otherwise."""
        await self.refresh()
        if not self._tokens and not self.require:
            return None
        header = request.headers.get("authorization")
        if not header or parse_basic(header) == ("", ""):  # skopeo --src-no-creds answers Basic with ":"
            raise unauthorized("authentication required: log in with a regcache client token "
                               "(e.g. skopeo --src-creds NAME:PASSWORD, docker login, podman login)")
        credentials = parse_basic(header)
        if credentials is None:
            raise unauthorized("send the client token as HTTP Basic credentials (NAME:PASSWORD)")
        name, password = credentials
        token = self._tokens.get(name)
        if token is None or not await self._verified_password(name, password, token):
            log.info("client %s: invalid credentials for token %r",
                     request.client.host if request.client else "?", name[:100])
            raise unauthorized("invalid token name or password")
        if token.expired():
            raise unauthorized(f"token {name!r} expired at {token.expires_at:%Y-%m-%d %H:%M:%S} UTC; "
                               f"ask the operator of this cache for a new one")
        await self._touch(name)
        return token

    async def _verified_password(self, name: str, password: str, token: ClientToken | None) -> bool:
        key = hmac.new(self._key, f"{name}\0{password}".encode(), hashlib.sha256).digest()
        now = time.monotonic()
        cached = self._verified.get(key)
        if cached is not None and token is not None and cached[0] > now and cached[2] == token.password_hash:
            return True
        encoded = token.password_hash if token is not None else None
        ok = await anyio.to_thread.run_sync(verify_password, password, encoded, limiter=self._kdf)
        if ok and token is not None:
            if len(self._verified) >= MAX_VERIFIED:
                self._verified = {k: v for k, v in self._verified.items() if v[0] > now}
                if len(self._verified) >= MAX_VERIFIED:
                    self._verified.clear()
            self._verified[key] = (now + VERIFIED_TTL, name, token.password_hash)
        return ok

    async def _touch(self, name: str) -> None:
        """Write last_used at most once a LAST_USED_INTERVAL per token."""
        now = time.monotonic()
        last = self._touched.get(name)
        if last is not None and now - last < LAST_USED_INTERVAL:
            return
        self._touched[name] = now
        when = datetime.now(timezone.utc).replace(microsecond=0)
        try:
            await self.state.run(lambda s: s.touch_client_token(name, when))
        except sqlite3.Error as exc:  # bookkeeping only: never fail a pull for it
            log.warning("could not record the last use of token %r: %s", name, exc)

    def authorize(self, token: ClientToken | None, repository: str) -> None:
        """403 DENIED unless ``token`` (None: anonymous, allowed) may pull ``repository``."""
        if token is not None and not token.allows(repository):
            raise RegistryError(403, "DENIED", f"token {token.name!r} may not pull repository {repository!r}; it "
                                               f"may pull {', '.join(token.repositories)}",
                                {"name": repository[:300]})
