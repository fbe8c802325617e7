"""Operations (warm, rule test, tag sync, gc) run in the embedded proxy's engine: a warm and a client's pull
share one download, and jobs keep working when the proxy cannot listen."""

from __future__ import annotations

import socket
import threading
import time

import anyio
import pytest

from regcache.proxy.core.models import JOINED_DOWNLOAD
from regcache.proxy.server import EmbeddedProxy, ListenError, ProxyServer
from regcache.tui.backend import Backend

from .fronts import THROTTLE, FaultyFront


def _wait(what: str, condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_a_warm_and_a_client_pull_of_one_blob_share_one_upstream_download(regcache, anonymous_registry,
                                                                          push_image):
    image = push_image(anonymous_registry, "acme/shared", "1", layers=[4_000_000])
    layer = image.layers[0]
    front = FaultyFront(anonymous_registry.url, THROTTLE).start()  # ~1 s for the layer: warm and pull overlap
    try:
        server = regcache.add_upstream(front)
        regcache.control.create_rule("shared-app", f"{server}/acme/shared", "shared")
        warmed: list = []
        warm = threading.Thread(target=lambda: warmed.append(regcache.proxy.call(lambda ops: ops.warm("shared:1"))))
        warm.start()
        # the layer's download is under way in the proxy's engine...
        _wait("the warm's download of the layer", lambda: front.blob_gets >= 2)
        with regcache.http() as http:  # ...and a client asks for the same blob meanwhile
            body = http.get(f"/v2/shared/blobs/{layer.digest}").content
        warm.join(30)
    finally:
        front.stop()
    assert body == layer.data
    assert warmed and warmed[0].digest == image.digest and warmed[0].blobs == 2
    assert front.blob_gets == 2  # the config and the layer, once each: the client joined the warm's download
    events = [e for e in regcache.events() if e["kind"] == "blob" and e["reference"] == layer.digest]
    # the warm's traffic is counted like a pull's (its own event, from "local"); the client joined its download
    assert sorted((e["client"], e["result"], e["detail"]) for e in events) == [
        ("127.0.0.1", "miss", JOINED_DOWNLOAD), ("local", "miss", None)]
    warm_event = next(e for e in events if e["client"] == "local")
    assert (warm_event["bytes"], warm_event["rule"], warm_event["user_agent"]) == (len(layer.data), "shared-app",
                                                                                        "regcache-warm")


def test_jobs_run_in_the_engine_when_the_port_is_taken(home, keyring_env, anonymous_registry, push_image):
    image = push_image(anonymous_registry, "acme/offline", "1", layers=[50_000])
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    proxy = EmbeddedProxy(ProxyServer(home, f"127.0.0.1:{taken.getsockname()[1]}"))
    try:
        with pytest.raises(ListenError):
            proxy.start()
        assert proxy.engine_running  # no listener, but the engine and its loop run on
        backend = Backend.open(home)
        backend.proxy = proxy
        try:
            backend.control.add_upstream(anonymous_registry.host, anonymous_registry.url, "anonymous")
            backend.control.create_rule("offline-app", f"{anonymous_registry.host}/acme/offline", "offline")
            result = backend.run_job(lambda ops: ops.warm("offline:1"))
        finally:
            backend.close()
        assert result.digest == image.digest
        assert proxy.operations is not None and proxy.operations.cache.blobs.downloads == 2  # this engine's
        assert all(proxy.operations.cache.blobs.backend.stored(d) for d in image.blobs)
    finally:
        proxy.stop()
        taken.close()
    assert not proxy.running


def test_a_running_job_does_not_hold_the_lock_the_screens_wait_on(home, keyring_env):
    backend = Backend.open(home)
    started, release = threading.Event(), threading.Event()

    async def slow_job(ops) -> str:
        started.set()
        while not release.is_set():
            await anyio.sleep(0.01)
        return "done"

    outcome: list[str] = []
    job = threading.Thread(target=lambda: outcome.append(backend.run_job(slow_job)))
    try:
        job.start()
        assert started.wait(20)
        began = time.monotonic()
        rules = backend.call(lambda b: b.control.list_rules())  # what a blade does on refresh
        waited = time.monotonic() - began
    finally:
        release.set()
        job.join(20)
        backend.close()
    assert rules == [] and outcome == ["done"]
    assert waited < 2.0  # answered while the job still ran, not after it (it ran until released)
