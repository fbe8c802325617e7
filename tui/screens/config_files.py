"""Files for other machines: client configuration, and the declarative rules file (export / plan / apply)."""

from __future__ import annotations

from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static, TextArea

from regcache.proxy.core.errors import RegcacheError

from ..messages import ConfigurationChanged
from ..text import printable, text
from ..widgets.form_row import FormRow
from ..widgets.key_bar import KeyBar
from ..widgets.text_input import TextInput
from .confirm import ConfirmScreen


class _FileScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape", "close", "Close", id="files.close")]

    def action_close(self) -> None:
        self.dismiss(None)

    def show(self, content: str, status: str = "") -> None:
        """``content`` in the text area (its lines kept, control characters spelled out), ``status`` above it."""
        self.query_one(TextArea).load_text(printable(content, limit=None, multiline=True))
        self.query_one("#status", Static).update(text(status))

    def report(self, status: str) -> None:
        self.query_one("#status", Static).update(text(status))


class ClientConfigScreen(_FileScreen):
    """What `regcache client-config` writes, for containerd, docker or podman."""

    def __init__(self, address: str) -> None:
        super().__init__()
        self.address = address

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog details"):
            yield Label("Client configuration", classes="title")
            yield FormRow("Client", Select([("containerd: hosts.toml per registry", "containerd"),
                                            ("podman / skopeo / CRI-O: registries.conf", "podman"),
                                            ("docker: daemon.json", "docker")], value="containerd",
                                           allow_blank=False, id="client", compact=True))
            yield FormRow("regcache address", TextInput(printable(self.address), id="address", compact=True))
            yield Static("", id="status", classes="detail")
            yield TextArea("", read_only=True, id="files")
        yield KeyBar()

    def on_mount(self) -> None:
        self.generate()

    def on_select_changed(self, event: Select.Changed) -> None:
        self.generate()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.generate()

    def generate(self) -> None:
        if not self.is_mounted:
            return
        self._generate(str(self.query_one("#client", Select).value),
                       self.query_one("#address", Input).value.strip() or self.address)

    @work(thread=True, exclusive=True, group="client-config")
    def _generate(self, client: str, address: str) -> None:
        from regcache.proxy.config import client_config

        def build(b) -> dict[str, str]:
            rules = b.control.list_rules()
            if client == "containerd":
                return client_config.containerd(address, rules, b.control.catalogue())
            if client == "docker":
                return client_config.docker(address, rules)
            return client_config.registries_conf(address, rules)

        try:
            files = self.app.backend.call(build)  # type: ignore[attr-defined]
        except RegcacheError as exc:
            self.app.call_from_thread(self.show, "", f"error: {exc}")
            return
        text = "".join(f"# --- {name}\n{body}\n" for name, body in files.items())
        self.app.call_from_thread(self.show, text, f"{len(files)} file(s); `regcache client-config {client} "
                                                   f"--address {address} -d DIR` writes them")


def default_rules_file(state_dir: Path) -> Path:
    """Where the rules-file dialog proposes the file: beside the state directory (its parent), or in the home
    directory when that parent is a hidden one (the default state directory, ~/.local/share/regcache); never
    the directory the TUI happened to be started in."""
    home = Path.home()
    parent = state_dir.expanduser().absolute().parent
    hidden = parent.is_relative_to(home) and any(part.startswith(".") for part in parent.relative_to(home).parts)
    return (home if hidden else parent) / "regcache-rules.yaml"


class RulesFileScreen(_FileScreen):
    """Export the configuration as YAML, or plan and apply a reviewed rules file."""

    BINDINGS = [Binding("escape", "close", "Close", id="files.close"),
                Binding("ctrl+o", "export", "Export", id="files.export"),
                Binding("ctrl+y", "apply", "Apply", id="files.apply")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog details"):
            yield Label("Rules file", classes="title")
            state_dir = self.app.backend.home  # type: ignore[attr-defined]
            yield FormRow("File", TextInput(printable(default_rules_file(state_dir), limit=None), id="path",
                                        compact=True))
            with Horizontal(classes="buttons"):
                yield Button("Export to file", id="export")
                yield Button("Plan from file", id="plan")
                yield Button("Apply file", variant="warning", id="apply")
            yield Static("", id="status", classes="detail")
            yield TextArea("", read_only=True, id="files")
        yield KeyBar()

    def on_mount(self) -> None:
        self.preview()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        {"export": self.action_export, "plan": self.action_plan, "apply": self.action_apply}[event.button.id or ""]()

    def _path(self) -> Path:
        return Path(self.query_one("#path", Input).value.strip()).expanduser()

    @work(thread=True, exclusive=True, group="rules-file")
    def preview(self) -> None:
        text = self.app.backend.call(export_document_of)  # type: ignore[attr-defined]
        self.app.call_from_thread(self.show, text, "the current configuration (what Export writes)")

    def action_export(self) -> None:
        self._file_action("export", self._path())

    def action_plan(self) -> None:
        self._file_action("plan", self._path())

    def action_apply(self) -> None:
        self._confirm_apply(self._path())

    def _read(self, path: Path) -> str:
        """The rules file as the CLI reads it: bounded by rules-file-max-size, UTF-8 or a clear error."""
        from regcache.proxy.config.declarative import read_rules_file

        with path.open("rb") as stream:
            return self.app.backend.call(lambda b: read_rules_file(b.control, stream))  # type: ignore[attr-defined]

    @work(thread=True, exclusive=True, group="rules-file")
    def _confirm_apply(self, path: Path) -> None:
        """Show the plan and ask before a bulk change: apply only on yes."""
        from regcache.proxy.config.declarative import plan_document

        try:
            text = self._read(path)
            changes = self.app.backend.call(lambda b: plan_document(b.control, text))  # type: ignore[attr-defined]
        except (RegcacheError, OSError) as exc:
            self.app.call_from_thread(self.report, f"error: {exc}")
            return
        if not changes:
            self.app.call_from_thread(self.show, "no changes: the configuration already matches the file",
                                      f"nothing to apply from {path}")
            return
        listing = "\n".join(printable(c) for c in changes)

        def answered(yes: bool | None) -> None:
            if yes:
                self._file_action("apply", path)

        self.app.call_from_thread(self.show, listing, f"{len(changes)} change(s) in {path}")
        self.app.call_from_thread(self.app.push_screen,
                                  ConfirmScreen(f"Apply {len(changes)} change(s) from {path.name}?",
                                                "\n".join(printable(c) for c in changes[:8])
                                                + ("\n..." if len(changes) > 8 else "")), answered)

    @work(thread=True, exclusive=True, group="rules-file")
    def _file_action(self, action: str, path: Path) -> None:
        from regcache.proxy.config.declarative import apply_document, plan_document

        try:
            if action == "export":
                text = self.app.backend.call(export_document_of)  # type: ignore[attr-defined]
                path.write_text(text)
                self.app.call_from_thread(self.report, f"wrote {path}")
                return
            text = self._read(path)
            run = apply_document if action == "apply" else plan_document
            changes = self.app.backend.call(lambda b: run(b.control, text))  # type: ignore[attr-defined]
        except (RegcacheError, OSError) as exc:
            self.app.call_from_thread(self.report, f"error: {exc}")
            return
        lines = "\n".join(printable(c) for c in changes) or "no changes: the configuration already matches the file"
        if action == "apply":
            status = f"applied {len(changes)} change(s) from {path}"
            self.app.call_from_thread(self.app.post_message, ConfigurationChanged("rules"))
        else:
            status = f"{len(changes)} change(s) planned from {path}; Apply file makes them"
        self.app.call_from_thread(self.show, lines, status)


def export_document_of(backend) -> str:
    from regcache.proxy.config.declarative import export_document

    return export_document(backend.control)
