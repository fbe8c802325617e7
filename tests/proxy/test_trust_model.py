"""A state machine over rule changes and pulls, checked against a model of which source may see which
digest (docs/security.md): whatever the order of changes, a 200 only ever carries content of the source
the rule names now, reached with the access it has now. Plain HTTP requests to the in-process app, over
in-process upstreams (httpx.MockTransport), to stay fast."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import httpx
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from starlette.testclient import TestClient

from regcache.proxy.config.control import ControlPlane
from regcache.proxy.core.oci import MANIFEST_TYPES
from regcache.proxy.http.registry import create_app
from tests.helpers.fake_registry import FakeRegistry

ONE, TWO = "one.test", "two.test"  # an anonymous registry; one that wants a login
SOURCES = [f"{ONE}/lib/a", f"{ONE}/lib/b", f"{TWO}/priv/a"]
ACCEPT = {"Accept": ", ".join(MANIFEST_TYPES)}
os.environ.update({"MODEL_USER": "puller", "MODEL_RIGHT": "right-password", "MODEL_WRONG": "wrong-password"})


class TrustModel(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="regcache-model-"))
        shared = b"a base layer two registries serve"
        self.one, self.two = FakeRegistry(), FakeRegistry(login=("puller", "right-password"))
        self.images = {  # source path -> (manifest digest, blob digests)
            f"{ONE}/lib/a": self._image(self.one, "lib/a", [shared, b"only in one/lib/a"]),
            f"{ONE}/lib/b": self._image(self.one, "lib/b", [b"only in one/lib/b"]),
            f"{TWO}/priv/a": self._image(self.two, "priv/a", [shared, b"only in two/priv/a, private"]),
        }
        registries = {ONE: self.one, TWO: self.two}
        transport = httpx.MockTransport(lambda request: registries[request.url.host].handle(request))
        self.control = ControlPlane.open(self.home)
        self.control.add_upstream(ONE, f"http://{ONE}", "anonymous")
        self.control.add_upstream(TWO, f"http://{TWO}", "both")
        self.control.create_credential_set("two-login", TWO, "env://MODEL_USER", "env://MODEL_RIGHT")
        self.password = "right"  # which secret the set's password id points at now
        self.client = TestClient(create_app(self.home, transport=transport))
        self.client.__enter__()
        self.rule: tuple[str, bool] | None = None  # (source path, with the credential set)

    @staticmethod
    def _image(registry: FakeRegistry, repository: str, layers: list[bytes]) -> tuple[str, set[str]]:
        blobs = {registry.put_blob(repository, data) for data in layers}
        config = registry.put_blob(repository, b'{"architecture":"amd64","os":"linux"}')
        manifest = registry.put_manifest(repository, "1", {
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 37},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": 1}
                       for d in sorted(blobs)]})
        return manifest, blobs | {config}

    def teardown(self) -> None:
        self.client.__exit__(None, None, None)
        self.control.close()
        shutil.rmtree(self.home, ignore_errors=True)

    # -- the model -----------------------------------------------------------------------------------

    def visible(self) -> tuple[str, set[str]] | None:
        """(manifest digest, every digest) the current rule may serve, or None when it may serve nothing."""
        if self.rule is None:
            return None
        source, with_login = self.rule
        if source.startswith(TWO) and not (with_login and self.password == "right"):
            return None  # refused by its upstream: this access never established anything
        manifest, blobs = self.images[source]
        return manifest, blobs | {manifest}

    def every_digest(self) -> list[str]:
        return sorted({d for manifest, blobs in self.images.values() for d in blobs | {manifest}})

    # -- changes -------------------------------------------------------------------------------------

    @rule(source=st.sampled_from(SOURCES), with_login=st.booleans())
    def point_the_rule_at(self, source: str, with_login: bool) -> None:
        with_login = with_login and source.startswith(TWO)  # the anonymous registry refuses credential sets
        if self.rule is not None:
            self.control.delete_rule("app-rule")
        self.control.create_rule("app-rule", source, "app", "two-login" if with_login else None)
        self.rule = (source, with_login)

    @precondition(lambda self: self.rule is not None)
    @rule()
    def delete_the_rule(self) -> None:
        self.control.delete_rule("app-rule")
        self.rule = None

    @rule()
    def repoint_the_password_id(self) -> None:
        """credential-set update -p: a new access, whichever secret it names."""
        self.password = "wrong" if self.password == "right" else "right"
        self.control.update_credential_set("two-login", password_id=f"env://MODEL_{self.password.upper()}")

    @rule(down=st.booleans(), which=st.sampled_from([ONE, TWO]))
    def upstream_outage(self, down: bool, which: str) -> None:
        (self.one if which == ONE else self.two).status = 503 if down else None

    # -- pulls ---------------------------------------------------------------------------------------

    @rule()
    def pull_the_tag(self) -> None:
        answer = self.client.get("/v2/app/manifests/1", headers=ACCEPT)
        self.check(answer, answer.headers.get("docker-content-digest"), liveness=True)

    @rule(data=st.data())
    def pull_a_manifest_by_digest(self, data: st.DataObject) -> None:
        digest = data.draw(st.sampled_from(sorted(m for m, _ in self.images.values())))
        self.check(self.client.get(f"/v2/app/manifests/{digest}", headers=ACCEPT), digest)

    @rule(data=st.data())
    def pull_a_blob(self, data: st.DataObject) -> None:
        digest = data.draw(st.sampled_from(self.every_digest()))
        answer = self.client.get(f"/v2/app/blobs/{digest}")
        self.check(answer, digest)

    def check(self, answer: httpx.Response, digest: str | None, liveness: bool = False) -> None:
        visible = self.visible()
        if answer.status_code in (200, 206):
            assert visible is not None, f"served {digest} with no source allowed to: rule {self.rule}"
            assert digest in visible[1], f"served {digest}, which {self.rule} does not have"
            return
        assert answer.status_code in (401, 404, 502, 503), answer.status_code
        if liveness and visible is not None and not self._down():
            raise AssertionError(f"refused {answer.status_code} what {self.rule} may serve: {answer.text[:200]}")

    def _down(self) -> bool:
        assert self.rule is not None
        return (self.one if self.rule[0].startswith(ONE) else self.two).status is not None

    @invariant()
    def nothing_unverified_is_kept(self) -> None:
        # a download's temporary file outlives its clients' transfers by the flush that keeps it: wait for that
        tmp = self.home / "blobs" / "tmp"
        deadline = time.monotonic() + 10
        while tmp.exists() and list(tmp.iterdir()):
            assert time.monotonic() < deadline, f"left in {tmp}: {list(tmp.iterdir())}"
            time.sleep(0.01)


TrustModel.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None,
                                        suppress_health_check=[HealthCheck.too_slow])
test_no_pull_ever_sees_another_sources_content = TrustModel.TestCase
