"""Messages the TUI's widgets post up to the app ("attributes down, messages up")."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message


@dataclass
class ConfigurationChanged(Message):
    """Rules, credential sets or upstreams changed; blades showing them reload."""

    what: str


@dataclass
class Navigate(Message):
    """Show the blade with this id."""

    blade: str
