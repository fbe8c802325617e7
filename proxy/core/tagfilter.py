"""Tag filters of tag sync: ``semver:>=1.2,<2`` or a regex, parsed once and validated with the rule."""

from __future__ import annotations

import re
from dataclasses import dataclass

from regcache.proxy.core.errors import ValidationError
from regcache.proxy.core.text import check_printable

_VERSION = re.compile(r"v?(\d+)(?:\.(\d+))?(?:\.(\d+))?")
_COMPARATOR = re.compile(r"\s*(>=|<=|==|=|>|<|~|\^)?\s*(v?\d+(?:\.\d+){0,2})\s*")


def _version(text: str) -> tuple[int, int, int] | None:
    m = _VERSION.fullmatch(text)
    return (int(m.group(1)), int(m.group(2) or 0), int(m.group(3) or 0)) if m else None


@dataclass(frozen=True, slots=True)
class TagFilter:
    """``semver:>=1.2,<2`` (tags that are plain versions, e.g. 1.2.3 or v1.4) or a regex (``regex:^3\\.``)."""

    kind: str
    expression: str

    @classmethod
    def parse(cls, text: str) -> TagFilter:
        text = check_printable(text, "sync_tags", "the tag filter").strip()
        if text.startswith("semver:"):
            expression = text.removeprefix("semver:")
            for part in expression.split(","):
                m = _COMPARATOR.fullmatch(part)
                if not m:
                    raise ValidationError(f"semver range {expression!r}: {part.strip()!r} is not a comparison "
                                          f"such as >=1.2, <2 or ~3.18", field="sync_tags")
            return cls("semver", expression)
        expression = text.removeprefix("regex:")
        try:
            re.compile(expression)
        except re.error as exc:
            raise ValidationError(f"tag filter {expression!r} is not a valid regex ({exc})",
                                  field="sync_tags") from None
        if not expression:
            raise ValidationError("the tag filter is empty", field="sync_tags")
        return cls("regex", expression)

    def matches(self, tag: str) -> bool:
        if self.kind == "regex":
            return re.search(self.expression, tag) is not None
        version = _version(tag)
        if version is None:
            return False
        for part in self.expression.split(","):
            op, bound_text = _COMPARATOR.fullmatch(part).groups()  # type: ignore[union-attr]
            bound = _version(bound_text)
            assert bound is not None
            op = op or "=="
            if op in ("~", "^"):  # ~1.2: >=1.2,<1.3 ; ^1.2: >=1.2,<2
                upper = (bound[0], bound[1] + 1, 0) if op == "~" else (bound[0] + 1, 0, 0)
                if not bound <= version < upper:
                    return False
            elif not {">=": version >= bound, "<=": version <= bound, ">": version > bound, "<": version < bound,
                      "==": version == bound, "=": version == bound}[op]:
                return False
        return True
