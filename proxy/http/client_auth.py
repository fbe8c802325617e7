"""Client authentication in the registry app: HTTP Basic with a client token, and its repository scope.

Once a token exists (or the server listens beyond loopback without ``--allow-anonymous``), every
``/v2/`` request must carry ``Authorization: Basic NAME:PASSWORD``; without it the answer is 401
with ``WWW-Authenticate: Basic realm="regcache"``, which docker, podman and skopeo answer by
retrying with the credentials they were given. Verifying a password costs a scrypt (about 50 ms),
so successful verifications are kept in memory for a minute, keyed by a keyed hash of the
credentials; the token table is reloaded whenever the configuration version moved (any process changed
a token).

Wrong passwords must not be able to buy that cost without bound: an unknown name is checked against a
dummy hash (the same work as a wrong password, so names cannot be told apart by timing), at most
:data:`VERIFICATIONS` checks run at once and ``login-queue`` wait (then 429 with ``Retry-After``; one
address may hold at most a quarter of the queue), identical credentials arriving together share one
check, and failures put the client address and the name in back-off
(:mod:`regcache.proxy.core.login_throttle`). A credential verified within the last minute passes
before any of this, so a flood never locks out a client that is already logged in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import math
import secrets
import sqlite3
import time
from datetime import datetime, timezone

import anyio
from starlette.requests import Request

from regcache.proxy.core.login_throttle import LoginThrottle, address_key
from regcache.proxy.core.settings import LOGIN_BACKOFF_SETTING, LOGIN_QUEUE_SETTING, ServerLimits
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
#: password checks running at once: scrypt takes 16 MiB and a core's 50 ms each
VERIFICATIONS = 2


def unauthorized(message: str) -> RegistryError:
    return RegistryError(401, "UNAUTHORIZED", message, headers=dict(CHALLENGE))


def too_many_requests(message: str, retry_after: float) -> RegistryError:
    """429 TOOMANYREQUESTS with ``Retry-After`` in whole seconds (at least 1)."""
    seconds = max(1, math.ceil(retry_after))
    return RegistryError(429, "TOOMANYREQUESTS", f"{message}; retry in {seconds} s",
                         headers={"Retry-After": str(seconds)})


class _Check:
    """One password check in flight; requests with the same credentials wait for it instead of queueing."""

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.finished = False
        self.ok = False
        self.error: RegistryError | None = None


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

    def __init__(self, state: AsyncStateStore, require: bool = False, limits: ServerLimits | None = None) -> None:
        self.state = state
        #: refuse anonymous requests even when no token exists (a server exposed beyond loopback)
        self.require = require
        self.limits = limits or ServerLimits()
        self._version: int | None = None
        self._tokens: dict[str, ClientToken] = {}
        self._verified: dict[bytes, tuple[float, str, str]] = {}  # key -> (until, name, password hash)
        self._touched: dict[str, float] = {}
        self._key = secrets.token_bytes(32)
        self._kdf = anyio.CapacityLimiter(VERIFICATIONS)
        self._throttle = LoginThrottle(self.limits.login_backoff)
        self._pending = 0  # checks running or waiting for the limiter
        self._pending_by_address: dict[str, int] = {}
        self._checks: dict[bytes, _Check] = {}  # credentials key -> the check in flight

    async def refresh(self) -> None:
        """Reload the token table when the configuration version moved (a token created, changed or deleted)."""
        version = await self.state.config_version()  # read before the tokens: a change meanwhile reloads again
        if version != self._version:
            tokens = await self.state.run(lambda s: s.client_tokens())
            self._tokens = {t.name: t for t in tokens}
            self._version = version

    async def authenticate(self, request: Request, require: bool = False) -> ClientToken | None:
        """The request's token; None when anonymous pulls are allowed; 401 UNAUTHORIZED otherwise.

        ``require`` asks for a token even while none exists (a listener of its own beyond loopback).
        Too many logins at once, or too many failures, answer 429 TOOMANYREQUESTS with ``Retry-After``.
        """
        await self.refresh()
        if not self._tokens and not (self.require or require):
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
        host = request.client.host if request.client else ""
        # an unknown name is checked too (against a dummy hash): it costs what a wrong password costs
        if not await self._verified_password(host, name, password, token):
            log.info("client %s: invalid credentials for token %r", host or "?", name[:100])
            raise unauthorized("invalid token name or password")
        assert token is not None  # verify_password never accepts the dummy hash
        if token.expired():
            raise unauthorized(f"token {name!r} expired at {token.expires_at:%Y-%m-%d %H:%M:%S} UTC; "
                               f"ask the operator of this cache for a new one")
        await self._touch(name)
        return token

    async def _verified_password(self, host: str, name: str, password: str, token: ClientToken | None) -> bool:
        key = hmac.new(self._key, f"{name}\0{password}".encode(), hashlib.sha256).digest()
        now = time.monotonic()
        cached = self._verified.get(key)
        if cached is not None and token is not None and cached[0] > now and cached[2] == token.password_hash:
            return True
        self._check_backoff(host, name, now)
        check = self._checks.get(key)
        if check is not None:  # the same credentials are being checked: share the answer
            await check.done.wait()
            if check.error is not None:
                raise check.error
            return check.ok
        address = address_key(host)
        if self._pending >= VERIFICATIONS + self.limits.login_queue:
            raise too_many_requests(f"regcache is checking too many logins at once ({VERIFICATIONS} running, "
                                    f"{self.limits.login_queue} waiting: setting {LOGIN_QUEUE_SETTING})", 1)
        if self._pending_by_address.get(address, 0) >= max(1, self.limits.login_queue // 4):
            raise too_many_requests(f"too many logins from {host} are waiting for a password check", 1)
        check = self._checks[key] = _Check()
        self._pending += 1
        self._pending_by_address[address] = self._pending_by_address.get(address, 0) + 1
        try:
            async with self._kdf:
                # while it waited, failures (a flood from the same address) may have put it in back-off
                self._check_backoff(host, name, time.monotonic())
                encoded = token.password_hash if token is not None else None
                check.ok = ok = await anyio.to_thread.run_sync(verify_password, password, encoded)
                check.finished = True
        except RegistryError as exc:
            check.error = exc
            raise
        finally:
            if not check.finished and check.error is None:  # cancelled while waiting its turn
                check.error = too_many_requests("the check of these credentials was interrupted", 1)
            self._pending -= 1
            left = self._pending_by_address.pop(address) - 1
            if left:
                self._pending_by_address[address] = left
            del self._checks[key]
            check.done.set()
        now = time.monotonic()
        if not ok:
            self._throttle.failed(host, name, now)
        if ok and token is not None:
            if len(self._verified) >= MAX_VERIFIED:
                self._verified = {k: v for k, v in self._verified.items() if v[0] > now}
                if len(self._verified) >= MAX_VERIFIED:
                    self._verified.clear()
            self._verified[key] = (now + VERIFIED_TTL, name, token.password_hash)
        return ok

    def _check_backoff(self, host: str, name: str, now: float) -> None:
        wait = self._throttle.refusal(host, name, now)
        if wait:
            raise too_many_requests(f"too many failed logins from {host or 'this address'} (setting "
                                    f"{LOGIN_BACKOFF_SETTING}); check the token name and password", wait)

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
