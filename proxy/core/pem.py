"""PEM certificate bundles: the certificates in a CA bundle's bytes, found without reading any file.

A CA bundle is text: ``-----BEGIN CERTIFICATE-----`` blocks of base64, with any text between them
(``openssl x509 -text`` comments, subject lines). It is read line by line, in time linear in its size
whatever it holds (no backtracking pattern over an operator's file). Anything that is not such a bundle is
refused with the reason: empty, binary or DER, a block left open, base64 that does not decode, a block that
is not a certificate. A private key is refused outright: a CA bundle never needs one, and a key file given by
mistake should not be kept in use.
"""

from __future__ import annotations

import base64
import binascii

from regcache.proxy.core.errors import ValidationError

_BEGIN, _END, _DASHES = b"-----BEGIN ", b"-----END ", b"-----"
#: what a block's label may be to be quoted in an error (it comes from the file: nothing else is shown)
_LABEL_CHARACTERS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ")


def _refused(what: str, problem: str) -> ValidationError:
    return ValidationError(f"{what} {problem}", field="ca_bundle")


def pem_certificates(data: bytes, what: str) -> tuple[bytes, ...]:
    """The DER bytes of every ``CERTIFICATE`` block of ``data``, in order; ``what`` names it in errors
    ("CA bundle /etc/regcache/ca.pem"). At least one, or a ValidationError saying what the bytes are instead."""
    if not data.strip():
        raise _refused(what, "is empty; give a PEM file of CA certificates (-----BEGIN CERTIFICATE-----)")
    certificates: list[bytes] = []
    label: bytes | None = None
    body: list[bytes] = []
    line_number = opened_at = 0
    for line_number, raw in enumerate(data.splitlines(), start=1):
        line = raw.strip()
        if label is None:
            if line.startswith(_BEGIN) and line.endswith(_DASHES) and len(line) > len(_BEGIN) + len(_DASHES):
                label, body, opened_at = line[len(_BEGIN):-len(_DASHES)], [], line_number
                if b"PRIVATE KEY" in label:
                    raise _refused(what, f"holds a private key (line {line_number}); a CA bundle holds CA "
                                         f"certificates only: give the CA's certificate, never a key")
            continue
        if line != _END + label + _DASHES:
            body.append(line)
            continue
        if label != b"CERTIFICATE":
            shown = repr(label.decode()) if len(label) <= 40 and set(label) <= _LABEL_CHARACTERS else "another"
            raise _refused(what, f"holds a {shown} block (line {opened_at}); a CA bundle holds CERTIFICATE "
                                 f"blocks only")
        try:
            der = base64.b64decode(b"".join(body), validate=True)
        except (binascii.Error, ValueError):
            raise _refused(what, f"holds a certificate whose base64 does not decode (line {opened_at})") from None
        if not der:
            raise _refused(what, f"holds an empty certificate block (line {opened_at})")
        certificates.append(der)
        label = None
    if label is not None:
        raise _refused(what, f"ends inside the block opened on line {opened_at} (no -----END line)")
    if not certificates:
        kind = "binary (perhaps DER: convert it with `openssl x509 -inform der -in FILE -out FILE.pem`)" \
            if b"\0" in data or not data.isascii() else "text without a PEM certificate"
        raise _refused(what, f"is {kind}; give a PEM file of CA certificates (-----BEGIN CERTIFICATE-----)")
    return tuple(certificates)
