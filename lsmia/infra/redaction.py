"""Credentials never leave lsmia in clear text: every URL's password is masked before it is logged or printed."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MASK = "***"
# scheme://userinfo@host: userinfo runs to the last '@' before the host, so a password holding '@' is masked whole
_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/\s?#]*)@")


def _mask(match: re.Match[str]) -> str:
    user, colon, _ = match["userinfo"].partition(":")
    if not colon:  # a lone token as the user name (https://TOKEN@host) is a secret too
        return f"{match['scheme']}{MASK}@"
    return f"{match['scheme']}{user}:{MASK}@"


def redact(text: str) -> str:
    """``text`` with the password of every URL in it masked: ``postgresql://u:***@h/db``, ``redis://:***@h``."""
    return _CREDENTIALS.sub(_mask, text)


def redact_tree(value: Any) -> Any:
    """A config (nested mappings, lists, strings) with every string :func:`redact`-ed."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {key: redact_tree(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_tree(item) for item in value]
    return value
