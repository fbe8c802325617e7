"""The control plane: what the CLI and the TUI call to read and change configuration.

Each change validates against the current state inside one write transaction, through the same
pure checks in :mod:`proxy.rules`, so the CLI and the TUI refuse exactly the same inputs and a
refused input leaves the database untouched.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

from regcache.proxy.core.catalogue import (
    BUILTIN_UPSTREAMS,
    UpstreamCatalogue,
    check_ca_bundle_path,
    normalize_allowed_origins,
    normalize_base_url,
    normalize_login_server,
)
from regcache.proxy.core.errors import ConflictError, NotFoundError, ValidationError
from regcache.proxy.core.fleet import fingerprint
from regcache.proxy.core.models import (
    AuthPolicy,
    CacheRule,
    CredentialHealth,
    CredentialSet,
    RateLimitRecord,
    Upstream,
    utc_now,
)
from regcache.proxy.core.oci import load_json
from regcache.proxy.core.references import is_digest
from regcache.proxy.core.rules import RuleSet, check_credentials, check_name, check_new_rule, check_settings
from regcache.proxy.core.secret_ids import SecretAccess, SecretId
from regcache.proxy.core.settings import (
    ALLOWED_HOSTS_SETTING,
    BLOB_MAX_SIZE_SETTING,
    BLOB_MIN_RATE_SETTING,
    BLOB_RATE_WINDOW_SETTING,
    CA_BUNDLE_MAX_SIZE_SETTING,
    EVENTS_MAX_AGE_SETTING,
    EVENTS_MAX_COUNT_SETTING,
    FLEET_ADDRESS_SETTING,
    FLEET_CA_SETTING,
    FLEET_NODE_ID_SETTING,
    FLEET_SECRET_SETTING,
    HEADER_TIMEOUT_SETTING,
    KEEPALIVE_TIMEOUT_SETTING,
    LIST_MAX_SIZE_SETTING,
    LOG_MAX_SIZE_SETTING,
    LOGIN_BACKOFF_SETTING,
    LOGIN_QUEUE_SETTING,
    MANIFEST_MAX_SIZE_SETTING,
    MAX_CONNECTIONS_SETTING,
    MAX_SIZE_SETTING,
    MIN_LOG_MAX_SIZE,
    RULE_SETTINGS,
    RULES_FILE_MAX_SIZE_SETTING,
    SECRET_FILE_MAX_SIZE_LIMIT,
    SECRET_FILE_MAX_SIZE_SETTING,
    STORAGE_SETTING,
    TOKEN_MAX_LIFETIME_SETTING,
    TOKEN_MAX_SIZE_SETTING,
    UPSTREAM_DEADLINE_SETTING,
    S3Storage,
    StorageConfig,
    UpstreamLimits,
    parse_count,
    parse_host_names,
    storage_from_json,
    storage_to_json,
)
from regcache.proxy.core.text import check_printable
from regcache.proxy.core.tokens import (
    ClientToken,
    check_password,
    generate_password,
    hash_password,
    parse_expiry,
    parse_repositories,
)
from regcache.proxy.core.units import format_duration, format_size, parse_duration, parse_size
from regcache.proxy.secrets import SecretResolver
from regcache.proxy.state.store import StateStore
from regcache.proxy.upstream.tls import read_ca_bundle


#: settings of the whole cache: key -> (parse, format, description)
def _size(n: float) -> str:
    return format_size(int(n))


def _count(text: str, field: str | None = None) -> int:
    value = text.strip()
    if not value.isascii() or not value.isdigit() or not 0 < int(value) <= 1_000_000:
        raise ValidationError(f"{value[:50]!r} must be a whole number from 1 to 1000000", field=field)
    return int(value)


def _log_size(text: str, field: str | None = None) -> int:
    size = parse_size(text, field)
    if size < MIN_LOG_MAX_SIZE:
        raise ValidationError(f"{text.strip()[:50]!r} must be at least {format_size(MIN_LOG_MAX_SIZE)}, e.g. 10MiB",
                              field=field)
    return size


def _positive_duration(text: str, field: str | None = None) -> float:
    seconds = parse_duration(text, field)
    if not 0 < seconds <= 3600:
        raise ValidationError(f"{text.strip()[:50]!r} must be a duration above 0s and at most 1h, e.g. 10s",
                              field=field)
    return seconds


def _secret_file_size(text: str, field: str | None = None) -> int:
    size = parse_size(text, field)
    if not 0 < size <= SECRET_FILE_MAX_SIZE_LIMIT:
        raise ValidationError(f"{text.strip()[:50]!r} must be a size above 0 and at most "
                              f"{format_size(SECRET_FILE_MAX_SIZE_LIMIT)}, e.g. 64KiB", field=field)
    return size


def _whole(n: float) -> str:
    return str(int(n))


def _host_names(text: str, field: str | None = None) -> str:
    return ",".join(parse_host_names(text, field))


def _text(value: str) -> str:
    return value


def _fleet_address(text: str, field: str | None = None) -> str:
    return normalize_base_url(text)


def _ca_file(text: str, field: str | None = None) -> str:
    """The path as given (the file itself is read by :meth:`ControlPlane.check_ca_bundle`, which set_setting calls)."""
    return check_ca_bundle_path(text)


def _secret_id(text: str, field: str | None = None) -> str:
    return str(SecretId.parse(text, field=field or "value"))


#: key -> (parse, format, help); values are stored as numbers (bytes or seconds), or as text (_TEXT_SETTINGS)
SETTINGS: dict[str, tuple[Callable[..., object], Callable[[Any], str | None], str]] = {
    MAX_SIZE_SETTING: (parse_size, _size,
                       "cache size limit; least recently pulled blobs are evicted above it (e.g. 50GiB)"),
    MANIFEST_MAX_SIZE_SETTING: (parse_size, _size,
                                "largest manifest or index an upstream may send (default 4MiB); larger ones "
                                "are refused and nothing is stored"),
    LIST_MAX_SIZE_SETTING: (parse_size, _size,
                            "largest tag list (all its pages together) or referrers index an upstream may "
                            "send (default 8MiB)"),
    TOKEN_MAX_SIZE_SETTING: (parse_size, _size,
                             "largest answer of an upstream's token service (default 256KiB)"),
    UPSTREAM_DEADLINE_SETTING: (parse_duration, format_duration,
                                "time for a whole manifest, tag-list, referrers or token call to an upstream "
                                "(default 60s; blobs are bounded by blob-min-rate instead)"),
    BLOB_MAX_SIZE_SETTING: (parse_size, _size,
                            "largest blob (layer) an upstream may send (default 32GiB); larger ones are refused "
                            "before a byte is stored"),
    BLOB_MIN_RATE_SETTING: (parse_size, _size,
                            "slowest blob download kept going, in bytes per second over blob-rate-window "
                            "(default 16KiB); a slower or stalled upstream is cut and nothing is stored"),
    BLOB_RATE_WINDOW_SETTING: (parse_duration, format_duration,
                               "the window blob-min-rate is measured over, also the time allowed for an upstream "
                               "to start answering a blob request (default 60s)"),
    EVENTS_MAX_AGE_SETTING: (parse_duration, format_duration,
                             "how long pull events are kept in the Activity log (default 30d); the statistics "
                             "keep counting what was pruned"),
    EVENTS_MAX_COUNT_SETTING: (parse_count, lambda n: str(int(n)),
                               "how many pull events are kept at most (default 1000000); older ones are pruned, "
                               "the statistics keep counting them"),
    FLEET_ADDRESS_SETTING: (_fleet_address, _text,
                            "the URL the other nodes on this bucket reach this node at (e.g. http://10.0.0.5:5000; "
                            "https:// when it serves --tls-cert); with fleet-secret set and s3 storage, nodes "
                            "download each cold blob once between them"),
    FLEET_SECRET_SETTING: (_secret_id, _text,
                           "the secret id (keyring://, env://, file://) of the secret every fleet member signs its "
                           "peer requests with; the same secret on every node"),
    FLEET_CA_SETTING: (_ca_file, _text,
                       "a PEM file of the CA that issued the fleet's node certificates: nodes serving TLS "
                       "(serve --tls-cert) verify each other against it alone (unset: the system's trust store)"),
    RULES_FILE_MAX_SIZE_SETTING: (parse_size, _size,
                                  "largest rules file `regcache rules apply` reads (default 1MiB); larger ones "
                                  "are refused before they are parsed"),
    LOG_MAX_SIZE_SETTING: (_log_size, _size,
                           "size at which regcache.log (the TUI's, or serve --log-file) is rotated; 3 older files "
                           "are kept (default 10MiB, at least 64KiB); read when the TUI or serve starts"),
    TOKEN_MAX_LIFETIME_SETTING: (parse_duration, format_duration,
                                 "longest an upstream token is reused, whatever lifetime its token service "
                                 "claims (default 1d; at least 1s)"),
    CA_BUNDLE_MAX_SIZE_SETTING: (parse_size, _size,
                                 "largest CA bundle file an upstream may name with --ca-bundle (default 1MiB)"),
    # what a client may hold of the server (read when the proxy starts)
    HEADER_TIMEOUT_SETTING: (_positive_duration, format_duration,
                             "time for a client to send a request line and headers, from connecting or from the "
                             "previous response (default 10s); slower connections are closed"),
    KEEPALIVE_TIMEOUT_SETTING: (_positive_duration, format_duration,
                                "time a kept-alive client connection may stay idle between requests (default 5s)"),
    MAX_CONNECTIONS_SETTING: (_count, _whole,
                              "client connections at once (default 1024, and never more than the open-files limit "
                              "allows); over it, connections still sending their headers are closed, oldest first"),
    ALLOWED_HOSTS_SETTING: (_host_names, _text,
                            "Host names a loopback listener answers besides localhost, 127.0.0.1 and [::1], "
                            "comma-separated (e.g. a name an nginx on this machine forwards); others get 403"),
    LOGIN_QUEUE_SETTING: (_count, _whole,
                          "client-token logins that may wait for a password check (default 32; 2 run at once); "
                          "when full, logins get 429 with Retry-After"),
    LOGIN_BACKOFF_SETTING: (parse_duration, format_duration,
                            "longest a client address is refused (429) after 5 failed logins in a minute; the "
                            "refusal doubles from 1s up to this (default 60s; 0 turns the back-off off)"),
    SECRET_FILE_MAX_SIZE_SETTING: (_secret_file_size, _size,
                                   "largest file a file:// secret id may name (default 64KiB, at most 1MiB); "
                                   "a larger one is refused unread"),
}
#: settings stored as text rather than as a number
_TEXT_SETTINGS = frozenset({ALLOWED_HOSTS_SETTING, FLEET_ADDRESS_SETTING, FLEET_SECRET_SETTING, FLEET_CA_SETTING})



@dataclass(frozen=True, slots=True)
class Purge:
    """What :meth:`ControlPlane.purge` removed of a cached repository, and the blobs it left unlinked."""

    repository: str
    tags: tuple[str, ...]
    #: the manifests and blobs the repository no longer links
    unlinked: tuple[str, ...]
    #: (digest, size, path, last access) of stored blobs no repository links any more: the gc's to delete
    orphans: tuple[tuple[str, int, str, datetime | None], ...]
    #: (source, tag) and (source, digest) removed: with s3 storage, the bucket's shared entries to drop too
    #: (or another node would bring them back from there)
    source_tags: tuple[tuple[str, str], ...] = ()
    source_links: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class FleetSettings:
    """What decides this node's place in a fleet (docs/scale-out.md, "A fleet"), read from its state."""

    #: the bucket the fleet shares
    storage: S3Storage
    #: the fleet-address and fleet-secret settings (None: unset)
    address: str | None
    secret_id: str | None
    #: this node's id (None until it first joined)
    node_id: str | None
    #: this node's configuration fingerprint (rules, upstreams, credential-set identities)
    fingerprint: str

    @property
    def configured(self) -> bool:
        """Whether this node joins the fleet when it serves (both settings set)."""
        return bool(self.address and self.secret_id)


def _referenced(content: bytes) -> list[str]:
    """The digests a manifest's content refers to: an index's manifests, an image's config and layers (and
    its subject is left alone: it belongs to whoever pulled it)."""
    try:
        doc = load_json(content)
    except ValueError:
        return []
    if not isinstance(doc, dict):
        return []
    descriptors = [doc.get("config"), *(doc.get("layers") or []), *(doc.get("manifests") or [])]
    return [d["digest"] for d in descriptors if isinstance(d, dict) and isinstance(d.get("digest"), str)]


def _check_setting_names(settings: dict[str, Any]) -> None:
    unknown = set(settings) - set(RULE_SETTINGS)
    if unknown:
        raise TypeError(f"unknown cache-rule settings: {', '.join(sorted(unknown))}")


def _no_credential_set(name: str) -> NotFoundError:
    return NotFoundError(f"credential set {name!r} does not exist (see `regcache credential-set list`)", field="name")


class ControlPlane:
    """Configuration of one state directory: cache rules, credential sets, upstreams, secrets."""

    def __init__(self, store: StateStore, secrets: SecretResolver | None = None) -> None:
        self.store = store
        self.secrets = secrets or SecretResolver()
        raw = store.setting(SECRET_FILE_MAX_SIZE_SETTING)
        if raw:
            self.secrets.file_max_size = int(float(raw))

    @classmethod
    def open(cls, home: str | os.PathLike[str] | None = None, secrets: SecretResolver | None = None) -> ControlPlane:
        return cls(StateStore.open(home), secrets)

    def close(self) -> None:
        self.store.close()

    # -- reads ---------------------------------------------------------------------------------

    def catalogue(self) -> UpstreamCatalogue:
        return UpstreamCatalogue(self.store.custom_upstreams(), self.store.upstream_overrides())

    def list_rules(self) -> list[CacheRule]:
        return self.store.cache_rules()

    def get_rule(self, name: str) -> CacheRule:
        rule = self.store.cache_rule(check_printable(name, "name", "the cache rule name"))
        if rule is None:
            raise NotFoundError(f"cache rule {name!r} does not exist (see `regcache cache list`)", field="name")
        return rule

    def list_credential_sets(self) -> list[CredentialSet]:
        return self.store.credential_sets()

    def get_credential_set(self, name: str) -> CredentialSet:
        cs = self.store.credential_set(check_printable(name, "name", "the credential set name"))
        if cs is None:
            raise _no_credential_set(name)
        return cs

    def list_upstreams(self) -> list[Upstream]:
        return list(self.catalogue())

    # -- cache rules ---------------------------------------------------------------------------

    def create_rule(self, name: str, source: str, target: str, credential_set: str | None = None,
                    **settings: Any) -> CacheRule:
        """Validate and store a new cache rule; raises ValidationError (with ``field``) when refused.

        ``settings`` are the CacheRule fields beyond ACR's: ``freshness``, ``retention``,
        ``serve_stale_on_error``, ``serve_stale_if_deleted``.
        """
        _check_setting_names(settings)
        candidate = CacheRule(name, source, target, credential_set or None, utc_now(), **settings)
        with self.store.transaction():
            existing = RuleSet(self.store.cache_rules())
            sets = {cs.name: cs for cs in self.store.credential_sets()}
            rule = check_new_rule(candidate, existing, sets, self.catalogue())
            self.store.insert_cache_rule(rule)
        return rule

    def update_rule(self, name: str, credential_set: str | None = None, remove_credential_set: bool = False,
                    **settings: Any) -> CacheRule:
        """Attach another credential set or remove it (not both), and/or change settings."""
        _check_setting_names(settings)
        if credential_set is not None and remove_credential_set or (
                credential_set is None and not remove_credential_set and not settings):
            raise ValidationError("give exactly one of --cred-set/-c NAME and --remove-cred-set, or a setting "
                                  "to change (--freshness, --retention, --serve-stale, --serve-stale-if-deleted)",
                                  field="credential_set")
        with self.store.transaction():
            rule = self.get_rule(name)
            if credential_set is not None or remove_credential_set:
                new = None if remove_credential_set else credential_set
                sets = {cs.name: cs for cs in self.store.credential_sets()}
                check_credentials(rule.source_login_server, new, sets, self.catalogue())
                rule = replace(rule, credential_set=new)
            rule = replace(rule, **settings)
            check_settings(rule)
            self.store.update_cache_rule(rule)
        return rule

    def delete_rule(self, name: str) -> CacheRule:
        """Delete a rule; what it cached stays until eviction."""
        with self.store.transaction():
            rule = self.get_rule(name)
            self.store.delete_cache_rule(name)
        return rule

    # -- cached content ------------------------------------------------------------------------

    def purge(self, repository: str, tag: str | None = None, digest: str | None = None) -> Purge:
        """Remove a tag, a digest or a whole repository from the cache, e.g. after an upstream served bad content;
        the next pull fetches it from the upstream again.

        A tag goes with its manifest unless another tag of the repository points at it; a digest goes with every
        tag pointing at it; what a removed manifest refers to (an index's images, an image's config and layers)
        goes unless a manifest the repository keeps refers to it. Blobs no repository links any more are
        returned in :attr:`Purge.orphans` for the gc to delete (:meth:`Operations.purge` does).
        """
        with self.store.transaction():
            self.check_purge(repository, tag, digest)
            linked = self.store.linked_digests(repository)
            if tag is None and digest is None:
                tags = tuple(sorted({t for t, _ in self.store.tagged(repository)}))
                source_tags = self.store.tag_sources(repository)
                source_links = self.store.link_sources(repository, linked)
                self.store.forget_repository(repository)
                unlinked = linked
            else:
                tagged = self.store.tagged(repository)
                if tag is not None:
                    roots = sorted({d for t, d in tagged if t == tag})
                    if not roots:
                        raise NotFoundError(f"{repository}:{tag} is not cached", field="tag")
                    source_tags = self.store.tag_sources(repository, tag=tag)
                    tags = tuple(self.store.delete_tags(repository, tag=tag))
                    still_tagged = {d for t, d in tagged if t != tag}
                    roots = [d for d in roots if d not in still_tagged]  # another tag keeps its manifest
                else:
                    assert digest is not None
                    if digest not in linked and all(d != digest for _, d in tagged):
                        raise NotFoundError(f"{repository}@{digest} is not cached", field="digest")
                    source_tags = self.store.tag_sources(repository, digest=digest)
                    tags = tuple(self.store.delete_tags(repository, digest=digest))
                    roots = [digest]
                gone = self._closure(roots)
                kept = self._closure([d for d in linked if d not in gone])
                # what was asked for goes even when a kept index refers to it; what it refers to only if unshared
                unlinked = sorted(d for d in gone if (d in roots or d not in kept) and d in linked)
                source_links = self.store.link_sources(repository, unlinked)
                self.store.unlink(repository, unlinked)
            orphans = tuple(self.store.unlinked_blobs(unlinked))
        return Purge(repository, tags, tuple(unlinked), orphans, tuple(source_tags), tuple(source_links))

    def check_purge(self, repository: str, tag: str | None = None, digest: str | None = None) -> None:
        """Refuse a purge that cannot be done (bad input, a repository not cached) before anyone is asked to
        confirm it; :meth:`purge` checks again."""
        check_printable(repository, "repository", "the repository")
        if tag is not None and digest is not None:
            raise ValidationError("give a tag or a digest to purge, not both (neither purges the whole repository)",
                                  field="tag")
        if tag is not None:
            check_printable(tag, "tag", "the tag")
        if digest is not None and not is_digest(digest):
            raise ValidationError(f"{digest[:80]!r} is not a digest (sha256:<64 hex digits> or sha512:<128>)",
                                  field="digest")
        if not self.store.is_cached_repository(repository):
            raise NotFoundError(f"repository {repository!r} is not cached (see the rule's details in the TUI)",
                                field="repository")

    def _closure(self, roots: Iterable[str]) -> set[str]:
        """``roots`` and every digest their manifests refer to, through indexes (stored manifests only)."""
        seen: set[str] = set()
        pending = list(roots)
        while pending:
            digest = pending.pop()
            if digest in seen:
                continue
            seen.add(digest)
            manifest = self.store.manifest(digest)
            if manifest is not None:
                pending.extend(_referenced(manifest[1]))
        return seen

    # -- credential sets -----------------------------------------------------------------------

    def secret_access(self, cs: CredentialSet) -> tuple[SecretAccess, SecretAccess]:
        """Whether THIS process can read the username and password of ``cs`` now (never prompts, never writes).

        Separate from the set's health, which is the last real upstream login (:class:`CredentialHealth`):
        a shell without the ``env://`` variables, or with the keyring locked, says so here and changes
        nothing that the proxy or another process reports.
        """
        return self.secrets.check(cs.username_secret_id), self.secrets.check(cs.password_secret_id)

    def check_new_credential_set_name(self, name: str) -> None:
        """Refuse a bad or taken name before anything (such as a secret) is stored under it."""
        check_name(name, "credential set")
        if self.store.credential_set(name) is not None:
            raise ConflictError(f"a credential set named {name!r} already exists", field="name")

    def create_credential_set(self, name: str, login_server: str, username_id: str, password_id: str) -> CredentialSet:
        check_name(name, "credential set")
        server = normalize_login_server(login_server)
        username = str(SecretId.parse(username_id, field="username_secret_id"))
        password = str(SecretId.parse(password_id, field="password_secret_id"))
        # health Unknown: nothing has logged in with it yet (`credential-set show --check` does)
        cs = CredentialSet(name, server, username, password, created_at=utc_now())
        with self.store.transaction():
            if self.store.credential_set(name) is not None:
                raise ConflictError(f"a credential set named {name!r} already exists", field="name")
            try:
                upstream = self.catalogue().get(server)
            except NotFoundError as exc:
                raise ValidationError(exc.message, field="login_server") from None
            if upstream.auth_policy is AuthPolicy.ANONYMOUS:
                raise ValidationError(
                    f"{server} supports {upstream.auth_policy.description}; a credential set for it "
                    f"could never be used", field="login_server")
            self.store.upsert_credential_set(cs)
        return cs

    def update_credential_set(self, name: str, username_id: str | None = None,
                              password_id: str | None = None) -> CredentialSet:
        if username_id is None and password_id is None:
            raise ValidationError("give -u USERNAME_ID and/or -p PASSWORD_ID to change", field="username_secret_id")
        username = str(SecretId.parse(username_id, field="username_secret_id")) if username_id else None
        password = str(SecretId.parse(password_id, field="password_secret_id")) if password_id else None
        with self.store.transaction():
            old = self.get_credential_set(name)
            cs = replace(old, username_secret_id=username or old.username_secret_id,
                         password_secret_id=password or old.password_secret_id)
            if (cs.username_secret_id, cs.password_secret_id) != (old.username_secret_id, old.password_secret_id):
                cs = replace(cs, health=CredentialHealth())  # other secrets: no login has tried them yet
            self.store.upsert_credential_set(cs)
        return cs

    def refresh_credential_set(self, name: str) -> CredentialSet:
        """The credential set as stored now; it writes nothing (re-checking means logging in to the upstream:
        ``Operations.check_credential_set``, or ``Backend.check_credential_set`` in the TUI)."""
        return self.get_credential_set(name)

    def record_health(self, name: str, health: CredentialHealth) -> CredentialSet:
        """Store the result of a real upstream login (the engine calls this; reads never do)."""
        cs = self.store.record_credential_health(name, health)
        if cs is None:
            raise _no_credential_set(name)
        return cs

    def delete_credential_set(self, name: str) -> CredentialSet:
        with self.store.transaction():
            cs = self.get_credential_set(name)
            users = self.store.rules_using_credential_set(name)
            if users:
                raise ConflictError(
                    f"credential set {name!r} is used by cache rule(s) {', '.join(users)}; "
                    f"remove it from them first (`regcache cache update -n RULE --remove-cred-set`)",
                    field="name")
            self.store.delete_credential_set(name)
        return cs

    # -- upstreams -----------------------------------------------------------------------------

    def add_upstream(self, login_server: str, url: str, auth: str | None = None,
                     allow_origins: Sequence[str] = (), ca_bundle: str | None = None) -> Upstream:
        """Add (or replace) a custom upstream, or override the base URL of a built-in one.

        ``allow_origins`` (``scheme://host[:port]``) are the origins besides the upstream's own that its
        redirects and token realms may reach on a loopback, link-local or private address, and that may
        receive the credential set as a token realm. They replace the entry's previous ones; an override of
        a built-in takes exactly these (the built-in's known realm hosts belong to its own URL).
        ``ca_bundle`` is a PEM file of CA certificates trusted for the upstream's own origin besides the
        operating system's store (:meth:`check_ca_bundle`); it replaces the previous one too.
        """
        server = normalize_login_server(login_server)
        base_url = normalize_base_url(url)
        origins = normalize_allowed_origins(allow_origins, base_url)
        bundle = self.check_ca_bundle(ca_bundle) if ca_bundle is not None else None
        if bundle is not None and not base_url.startswith("https://"):
            raise ValidationError(f"a CA bundle verifies TLS, but {base_url} is plain http; give the https:// URL "
                                  f"of the upstream", field="ca_bundle")
        with self.store.transaction():
            if server in BUILTIN_UPSTREAMS:
                builtin = BUILTIN_UPSTREAMS[server]
                if auth is not None and AuthPolicy.parse(auth) is not builtin.auth_policy:
                    raise ValidationError(
                        f"{server} is built in with the policy {builtin.auth_policy.value!r}; only its URL, "
                        f"allowed origins and CA bundle can be overridden", field="auth")
                self.store.upsert_upstream(server, base_url, None, "override", origins, bundle)
            else:
                policy = AuthPolicy.parse(auth) if auth else AuthPolicy.BOTH
                for rule in self.store.cache_rules():
                    if rule.source_login_server == server:
                        check_credentials(server, rule.credential_set,
                                          {cs.name: cs for cs in self.store.credential_sets()},
                                          UpstreamCatalogue([Upstream(server, base_url, policy)]))
                self.store.upsert_upstream(server, base_url, policy, "custom", origins, bundle)
            return self.catalogue().get(server)

    def check_ca_bundle(self, path: str) -> str:
        """The absolute path of a usable CA bundle: a readable regular file within the ca-bundle-max-size
        setting holding at least one PEM certificate OpenSSL accepts; else a ValidationError saying why."""
        given = check_ca_bundle_path(path)
        absolute = os.path.abspath(os.path.expanduser(given))  # the proxy's working directory is not the caller's
        setting = self.store.setting(CA_BUNDLE_MAX_SIZE_SETTING)
        read_ca_bundle(absolute, UpstreamLimits.from_settings({CA_BUNDLE_MAX_SIZE_SETTING: setting}).ca_bundle_bytes)
        return absolute

    def remove_upstream(self, login_server: str) -> Upstream:
        """Remove a custom upstream (refused while rules use it), or a built-in's URL override."""
        server = normalize_login_server(login_server)
        with self.store.transaction():
            upstream = self.catalogue().get(server)
            if upstream.builtin and not upstream.overridden:
                raise ValidationError(f"{server} is built in and has no URL override to remove",
                                      field="login_server")
            if not upstream.builtin:
                users = self.store.rules_with_source_on(server)
                if users:
                    raise ConflictError(f"upstream {server} is the source of cache rule(s) {', '.join(users)}; "
                                        f"delete them first", field="login_server")
                sets = [cs.name for cs in self.store.credential_sets() if cs.login_server == server]
                if sets:
                    raise ConflictError(f"upstream {server} has credential set(s) {', '.join(sets)}; "
                                        f"delete them first", field="login_server")
            self.store.delete_upstream(server)
        return upstream

    def rate_limits(self) -> dict[tuple[str, str], RateLimitRecord]:
        """Every recorded budget, by (login server, credential set name or ANONYMOUS)."""
        return {(r.login_server, r.identity): r for r in self.store.rate_limits()}

    def rate_limit(self, login_server: str, identity: str) -> RateLimitRecord | None:
        """The last rate-limit budget recorded for a credential set (or ANONYMOUS pulls) on an upstream."""
        return next((r for r in self.store.rate_limits() if (r.login_server, r.identity) == (login_server, identity)),
                    None)

    # -- settings ------------------------------------------------------------------------------

    def settings(self) -> dict[str, str]:
        """Every known setting, formatted ('' when unset)."""
        result = {}
        for key, (_, fmt, _) in SETTINGS.items():
            raw = self.store.setting(key)
            result[key] = (fmt(raw if key in _TEXT_SETTINGS else float(raw)) or "") if raw else ""
        return result

    def set_setting(self, key: str, value: str) -> str:
        if check_printable(key, "key", "the setting name") not in SETTINGS:
            raise ValidationError(f"unknown setting {key!r}; known: {', '.join(SETTINGS)}", field="key")
        parse, fmt, _ = SETTINGS[key]
        # a CA file is checked as an upstream's --ca-bundle is: readable, bounded, PEM certificates; kept absolute
        parsed = self.check_ca_bundle(value) if key == FLEET_CA_SETTING else parse(value, field="value")
        self.store.set_setting(key, str(parsed))
        return fmt(parsed) or ""

    def unset_setting(self, key: str) -> None:
        if check_printable(key, "key", "the setting name") not in SETTINGS:
            raise ValidationError(f"unknown setting {key!r}; known: {', '.join(SETTINGS)}", field="key")
        self.store.delete_setting(key)

    # -- storage backend -----------------------------------------------------------------------

    def fleet_settings(self) -> FleetSettings | None:
        """This node's fleet settings and configuration fingerprint; None when its storage is not a bucket."""
        storage = self.storage()
        if not isinstance(storage, S3Storage):
            return None
        return FleetSettings(storage, self.store.setting(FLEET_ADDRESS_SETTING) or None,
                             self.store.setting(FLEET_SECRET_SETTING) or None,
                             self.store.setting(FLEET_NODE_ID_SETTING) or None,
                             fingerprint(self.list_rules(), self.list_upstreams(), self.list_credential_sets()))

    def storage(self) -> StorageConfig:
        """Where blobs and manifests are kept (``filesystem`` unless set to an S3 bucket)."""
        return storage_from_json(self.store.setting(STORAGE_SETTING))

    def set_storage(self, config: StorageConfig) -> StorageConfig:
        """Use ``config`` from the next start of the proxy on (it holds secret ids, never values)."""
        self.store.set_setting(STORAGE_SETTING, storage_to_json(config))
        return config

    # -- secrets -------------------------------------------------------------------------------

    def set_secret(self, secret_id: str, value: str) -> None:
        """Store a secret value in the keyring (never in the state database)."""
        self.secrets.set(secret_id, value)

    def secret_references(self) -> dict[str, list[str]]:
        """Every secret id the configuration names, and what names it (``credential set hub (password)``)."""
        refs: dict[str, list[str]] = {}
        for cs in self.store.credential_sets():
            refs.setdefault(cs.username_secret_id, []).append(f"credential set {cs.name} (username)")
            refs.setdefault(cs.password_secret_id, []).append(f"credential set {cs.name} (password)")
        storage = self.storage()
        for label, secret_id in (("access key id", getattr(storage, "access_key_id", None)),
                                 ("secret access key", getattr(storage, "secret_access_key", None))):
            if secret_id:
                refs.setdefault(secret_id, []).append(f"storage ({label})")
        return refs

    def list_secrets(self) -> list[tuple[SecretAccess, list[str]]]:
        """The secret ids the configuration references, whether this process can read each (and why), and
        what uses each; never a value, never a prompt."""
        return [(self.secrets.check(secret_id), users) for secret_id, users in sorted(self.secret_references().items())]

    def delete_secret(self, secret_id: str, force: bool = False) -> str:
        """Delete a ``keyring://`` secret (refused while the configuration uses it, unless ``force``).

        ``env://`` and ``file://`` values are not regcache's: it only reads them, and says where they live.
        """
        secret = SecretId.parse(secret_id, field="secret_id")
        if not secret.ours:
            self.secrets.delete(str(secret))  # raises: explains whose it is
        users = self.secret_references().get(str(secret), [])
        if users and not force:
            raise ConflictError(f"{secret} is used by {', '.join(users)}; point those at another secret first, or "
                                f"pass --force to delete it anyway (their pulls then fail until it is stored "
                                f"again)", field="secret_id")
        if not self.secrets.delete(str(secret)):
            raise NotFoundError(f"there is no {secret} in the keyring (see `regcache secret list`)",
                                field="secret_id")
        return str(secret)

    # -- client tokens -------------------------------------------------------------------------

    def list_tokens(self) -> list[ClientToken]:
        return self.store.client_tokens()

    def get_token(self, name: str) -> ClientToken:
        token = self.store.client_token(check_printable(name, "name", "the token name"))
        if token is None:
            raise NotFoundError(f"token {name!r} does not exist (see `regcache token list`)", field="name")
        return token

    def create_token(self, name: str, repositories: Sequence[str], expiry: str | datetime | None = None,
                     password: str | None = None) -> tuple[ClientToken, str]:
        """A new client token and its password, which is returned here once and never stored.

        ``repositories`` are patterns in the cache-rule target grammar (``ubuntu``, ``team/*``, ``*``);
        ``expiry`` an ISO date/datetime (UTC), a duration from now (``30d``) or None (never expires).
        ``password`` None generates one; a given one (the same token on every node behind a load
        balancer) must pass :func:`proxy.tokens.check_password` (``ValidationError``, field ``password``).
        """
        check_name(name, "token")
        patterns = parse_repositories(repositories)
        now = utc_now()
        expires_at = parse_expiry(expiry, now) if isinstance(expiry, str) else expiry
        if expires_at is not None and expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=timezone.utc)
        if expires_at is not None and expires_at <= now:
            raise ValidationError("the expiry must be in the future", field="expiry")
        password = generate_password() if password is None else check_password(password)
        if self.store.client_token(name) is not None:  # before the slow hash; checked again below
            raise ConflictError(f"a token named {name!r} already exists; delete it first or choose another name",
                                field="name")
        token = ClientToken(name, patterns, hash_password(password), now, expires_at)
        with self.store.transaction():
            if self.store.client_token(name) is not None:
                raise ConflictError(f"a token named {name!r} already exists; delete it first or choose another "
                                    f"name", field="name")
            self.store.insert_client_token(token)
        return token, password

    def delete_token(self, name: str) -> ClientToken:
        """Delete a token; clients using it are refused from their next request."""
        with self.store.transaction():
            token = self.get_token(name)
            self.store.delete_client_token(name)
        return token
