"""The fields that define new credentials, shared by the Credentials form and the New cache rule form.

With "Store in the keyring" the typed username and password go to the OS keyring under
``keyring://regcache/<name>-username`` and ``-password``; the inputs are masked and cleared after
a save, and the values are never shown again.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Input, Label, RadioButton, RadioSet, Static

from regcache.proxy.config.control import ControlPlane
from regcache.proxy.core.models import CredentialSet

from ..text import text
from .form_row import FormRow
from .text_input import TextInput
from .toggles import StateRadioButton

KEYRING_SERVICE = "regcache"


@dataclass(frozen=True)
class NewCredentials:
    """What the operator typed; ``repr`` hides the values."""

    name: str
    use_keyring: bool
    username: str
    password: str

    def __repr__(self) -> str:
        return f"NewCredentials({self.name!r}, use_keyring={self.use_keyring})"

    @property
    def secret_ids(self) -> tuple[str, str]:
        if self.use_keyring:
            return (f"keyring://{KEYRING_SERVICE}/{self.name}-username",
                    f"keyring://{KEYRING_SERVICE}/{self.name}-password")
        return self.username.strip(), self.password.strip()

    def save(self, control: ControlPlane, login_server: str) -> CredentialSet:
        """Store the values (keyring mode) and create the credential set."""
        username_id, password_id = self.secret_ids
        if self.use_keyring:
            control.check_new_credential_set_name(self.name)
            control.set_secret(username_id, self.username)
            control.set_secret(password_id, self.password)
        return control.create_credential_set(self.name, login_server, username_id, password_id)

    def discard(self, control: ControlPlane) -> None:
        """Undo :meth:`save`: the credential set and the keyring values it stored."""
        control.delete_credential_set(self.name)
        if self.use_keyring:
            for secret_id in self.secret_ids:
                control.secrets.delete(secret_id)


class CredentialFields(Vertical):
    """Name, source authentication (keyring values or secret URIs), and the two values."""

    DEFAULT_CLASSES = "credential-fields"

    def compose(self) -> ComposeResult:
        yield FormRow("Credentials name", TextInput(placeholder="5-50 letters, digits, hyphens", id="cred-name",
                                                compact=True))
        yield Static(id="cred-name-error", classes="error")
        with RadioSet(id="cred-mode"):
            yield StateRadioButton("Store in the keyring", value=True, id="cred-keyring")
            yield StateRadioButton("Enter secret URIs", id="cred-uris")
        # a user name is no secret: it is shown as typed; the password field is masked
        yield FormRow("Username", TextInput(placeholder="upstream user name", id="cred-username", compact=True),
                      id="cred-username-row")
        yield Static(id="cred-username-error", classes="error")
        yield FormRow("Password", TextInput(placeholder="password or token: never shown again", password=True,
                                        id="cred-password", compact=True), id="cred-password-row")
        yield Static(id="cred-password-error", classes="error")
        yield Static(id="cred-error", classes="error")

    def on_radio_set_changed(self, event: RadioSet.Changed) -> None:
        event.stop()
        keyring = event.pressed.id == "cred-keyring"
        self.query_one("#cred-username-row Label", Label).update(text("Username" if keyring else "Username URI"))
        self.query_one("#cred-password-row Label", Label).update(text("Password" if keyring else "Password URI"))
        for input_id, placeholder in (("cred-username", "upstream user name" if keyring else
                                       "keyring://SERVICE/NAME or env://VAR"),
                                      ("cred-password", "password or token: never shown again" if keyring else
                                       "keyring://SERVICE/NAME or env://VAR")):
            field = self.query_one(f"#{input_id}", Input)
            field.password = keyring and input_id == "cred-password"  # secret URIs are not secrets
            field.placeholder = placeholder
            field.value = ""

    def values(self) -> NewCredentials:
        return NewCredentials(
            self.query_one("#cred-name", Input).value.strip(),
            self.query_one("#cred-keyring", RadioButton).value,
            self.query_one("#cred-username", Input).value,
            self.query_one("#cred-password", Input).value,
        )

    def clear_secrets(self) -> None:
        for input_id in ("cred-username", "cred-password"):
            self.query_one(f"#{input_id}", Input).value = ""

    #: the engine's error fields, and the field of this widget each belongs beside
    ERROR_FIELDS = {"name": "cred-name", "username_secret_id": "cred-username", "password_secret_id": "cred-password"}

    def show_error(self, message: str, field: str | None = None) -> None:
        """``message`` beside the field the engine named (``name``, ``username_secret_id`` ...), else below all."""
        error = self.query_one(f"#{self.ERROR_FIELDS.get(field or '', 'cred')}-error", Static)
        error.update(text(message))  # engine errors quote what was typed
        error.display = True
