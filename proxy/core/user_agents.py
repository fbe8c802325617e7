"""Which tool a registry client is, from its User-Agent: the Activity log says "docker", not only an address.

Clients name themselves in their first product token (``containerd/1.7.2``, ``oras/1.1.0``, ``Helm/3.14.0``,
``skopeo/1.13``); docker's daemon sends ``docker/24.0.7 go/... UpstreamClient(Docker-Client/...)``; podman,
skopeo and buildah share the containers/image library, whose default is ``containers/5.29 (github.com/
containers/image)``. A User-Agent is the client's word, never proof: it names the tool for reading only.
"""

from __future__ import annotations

import re

#: (tool, pattern searched in the User-Agent, case-insensitive), the first match wins: specific before generic
_PATTERNS: tuple[tuple[str, str], ...] = (
    ("regcache", r"^regcache\b"),
    ("podman", r"\bpodman/"),
    ("skopeo", r"\bskopeo/"),
    ("buildah", r"\bbuildah/"),
    ("cri-o", r"\bcri-o/"),
    ("buildkit", r"\bbuildkit/"),
    ("docker", r"^docker/|Docker-Client/"),
    ("containerd", r"^containerd/"),
    ("nerdctl", r"\bnerdctl/"),
    ("kaniko", r"\bkaniko/"),
    ("crane", r"\bcrane/"),
    ("ko", r"^ko/"),
    ("oras", r"^oras/"),
    ("helm", r"^helm/"),
    ("regctl", r"\bregctl\b|^regclient/"),
    ("flux", r"\bflux/"),
    ("podman/skopeo", r"^containers/.*containers/image"),  # containers/image's default: the tool is not said
    ("go-containerregistry", r"go-containerregistry/"),
    ("curl", r"^curl/"),
    ("python", r"^python-(httpx|requests)/|^python-urllib"),
    ("go", r"^Go-http-client/"),
)
_TOOLS = tuple((tool, re.compile(pattern, re.IGNORECASE)) for tool, pattern in _PATTERNS)
#: the first product token, shown when no known tool matched (``tool/1.0`` -> ``tool``)
_PRODUCT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]{0,31})(?:/|\s|$)")


def client_tool(user_agent: str | None) -> str:
    """The tool a User-Agent names: ``docker``, ``podman``, ``containerd``, ``skopeo``, ``crane``, ``oras``,
    ``helm``...; else its first product name (at most 32 characters), or ``""`` when there is none."""
    if not user_agent:
        return ""
    for tool, pattern in _TOOLS:
        if pattern.search(user_agent):
            return tool
    product = _PRODUCT.match(user_agent.strip())
    return product.group(1).lower() if product else ""
