"""Fixtures for the scale-out tests: nginx balancing over regcache nodes."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import pytest

from .nginx import NginxBalancer, NginxError, nginx_binary

StartBalancer = Callable[[Sequence[str]], NginxBalancer]


@pytest.fixture
def load_balancer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartBalancer]:
    """``load_balancer(["127.0.0.1:PORT", ...])`` starts nginx balancing over those nodes; stopped at teardown.

    A missing nginx fails the test (never skips) with the ``apt-get install`` line to run.
    """
    try:
        binary = nginx_binary()
    except FileNotFoundError as error:
        pytest.fail(str(error), pytrace=False)
    started: list[NginxBalancer] = []

    def start(backends: Sequence[str]) -> NginxBalancer:
        balancer = NginxBalancer(tmp_path_factory.mktemp("nginx"), backends, binary=binary)
        started.append(balancer)
        try:
            return balancer.start()
        except NginxError as error:
            pytest.fail(str(error), pytrace=False)

    yield start
    for balancer in started:
        balancer.stop()
