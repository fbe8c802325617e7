"""Back-off after failed client-token logins, per client address and per token name (pure: the caller gives the time).

Per address: after :data:`ADDRESS_THRESHOLD` failures within :data:`WINDOW` seconds the address is refused for 1 s,
and every further failure before its record decays doubles that, up to the cap (the ``login-backoff`` setting).
A refused attempt runs no password check and does not count. IPv6 addresses count per /64, as one host usually
holds a whole /64.

Per name: a flood against one name from many addresses (:data:`NAME_THRESHOLD` failures within the window)
*guards* the name for a doubling time capped at half the address cap. While a name is guarded, an address that
already failed against it is refused; an address without a recent failure still gets its password checked. So
nobody can lock a real user out by failing against the user's name from elsewhere, while a guesser spread over
many addresses gets one guess per address and guard period instead of :data:`ADDRESS_THRESHOLD`. Unknown names
are tracked exactly like known ones, so the back-off tells nothing about which names exist.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections import OrderedDict, deque
from dataclasses import dataclass, field

#: failures an address may make within WINDOW before it is refused
ADDRESS_THRESHOLD = 5
#: failures against one name (from any addresses) within WINDOW before the name is guarded
NAME_THRESHOLD = 20
#: seconds over which failures are counted
WINDOW = 60.0
#: addresses and names remembered at most (the least recently failing are forgotten first)
MAX_ADDRESSES = 65_536
MAX_NAMES = 4_096
#: addresses remembered per guarded name
MAX_ADDRESSES_PER_NAME = 1_024


def address_key(host: str) -> str:
    """The unit an address is counted in: the address itself, or its /64 for IPv6 (IPv4-mapped counts as IPv4)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host[:64]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def _name_key(name: str) -> bytes:
    return hashlib.sha256(name.encode("utf-8", "surrogatepass")).digest()[:16]  # any length of name, 16 bytes kept


@dataclass(slots=True)
class _Record:
    failures: deque[float] = field(default_factory=deque)
    #: refused (an address) or guarded (a name) until this time
    until: float = 0.0
    #: refusals imposed since the record last decayed: the next one lasts 2**level seconds
    level: int = 0
    last: float = 0.0
    #: for a name: address key -> time of its last failure against the name
    addresses: OrderedDict[str, float] = field(default_factory=OrderedDict)


class Backoff:
    """Failures per key; past ``threshold`` within ``window``, a refusal that doubles per further failure, capped."""

    def __init__(self, threshold: int, window: float, cap: float, max_keys: int) -> None:
        self.threshold = threshold
        self.window = window
        self.cap = cap
        self.max_keys = max_keys
        self._records: OrderedDict[object, _Record] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def remaining(self, key: object, now: float) -> float:
        """Seconds ``key`` is still refused (0: not refused)."""
        record = self._records.get(key)
        return max(0.0, record.until - now) if record is not None else 0.0

    def failed(self, key: object, now: float) -> _Record | None:
        """Count a failure of ``key``; returns its record (None while the back-off is off)."""
        if self.cap <= 0:
            return None
        record = self._records.pop(key, None) or _Record()
        self._records[key] = record  # most recent last: the oldest are forgotten first
        while len(self._records) > self.max_keys:
            self._records.popitem(last=False)
        if record.level and now - record.last > self.window + self.cap:
            record.level = 0  # quiet long enough: start over
            record.failures.clear()
        record.last = now
        while record.failures and now - record.failures[0] > self.window:
            record.failures.popleft()
        record.failures.append(now)
        if record.level or len(record.failures) >= self.threshold:
            record.until = now + min(self.cap, 2.0 ** min(record.level, 30))
            record.level += 1
            record.failures.clear()
        return record

    def recently_failed(self, key: object, address: str, now: float) -> bool:
        """Whether ``address`` failed against ``key`` within the window or the current refusal."""
        record = self._records.get(key)
        when = record.addresses.get(address) if record is not None else None
        return when is not None and now - when <= self.window + self.cap


class LoginThrottle:
    """Whether a login may have its password checked now, given the failures seen; see the module docstring."""

    def __init__(self, cap: float) -> None:
        #: the longest refusal of an address (the ``login-backoff`` setting); 0 turns the back-off off
        self.cap = cap
        self.addresses = Backoff(ADDRESS_THRESHOLD, WINDOW, cap, MAX_ADDRESSES)
        self.names = Backoff(NAME_THRESHOLD, WINDOW, cap / 2, MAX_NAMES)

    def refusal(self, host: str, name: str, now: float) -> float:
        """Seconds before this address may try this name again (0: check the password now)."""
        address = address_key(host)
        wait = self.addresses.remaining(address, now)
        if wait:
            return wait
        key = _name_key(name)
        guarded = self.names.remaining(key, now)
        if guarded and self.names.recently_failed(key, address, now):
            return guarded
        return 0.0

    def failed(self, host: str, name: str, now: float) -> None:
        """A password check failed for ``name`` from ``host``."""
        address = address_key(host)
        self.addresses.failed(address, now)
        record = self.names.failed(_name_key(name), now)
        if record is not None:
            record.addresses.pop(address, None)
            record.addresses[address] = now
            while len(record.addresses) > MAX_ADDRESSES_PER_NAME:
                record.addresses.popitem(last=False)
