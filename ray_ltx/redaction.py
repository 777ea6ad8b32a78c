"""Credentials never leave the process: URIs and configs as they may appear in logs, files and MLflow.

A URI may carry credentials in its user-info part (``https://user:pass@host``, ``s3://KEY:SECRET@bucket``)
or in query parameters (``?token=...``, presigned ``X-Amz-Signature``). Everything written down (logs,
error messages, ``config.yaml``, MLflow params and tags, sweep state) goes through :func:`redact` or
:func:`redacted_config`; the raw values are used only to connect.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
_SECRET_QUERY = re.compile(
    r"(?i)([?&](?:[a-z0-9_.-]*(?:token|password|passwd|secret|signature|credential|api[_-]?key|access[_-]?key)"
    r"[a-z0-9_.-]*)=)[^&\s#]*")
# ``id_token`` is the caption trigger word, not a credential: users need it back from config.yaml and MLflow.
SECRET_NAMES = re.compile(r"(?<!id_)token|password|passwd|secret|credential|api_key|access_key", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with URI user-info and secret-looking query values masked (idempotent)."""
    if not text:
        return text
    return _SECRET_QUERY.sub(rf"\g<1>{MASK}", _USERINFO.sub(f"{MASK}@", text))


def redact_value(value: Any) -> Any:
    """Strings redacted, containers walked, anything else as is."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: (MASK if SECRET_NAMES.search(str(k)) and v else redact_value(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_value(v) for v in value)
    return value


def redacted_config(config: Any) -> dict[str, Any]:
    """A config (or its dict) with every credential masked: what ``config.yaml`` and MLflow receive."""
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return redact_value(data)


class Secret:
    """A string that prints redacted (``str``, ``repr``, f-strings); :meth:`reveal` gives the value back.

    For credential-bearing values handed to Ray in memory, e.g. a train loop config: Ray keeps what it
    is handed in its job and Train run state (the dashboard shows a run's train loop config), and it
    shows a non-string value through ``str``.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __str__(self) -> str:
        return redact(self._value)

    def __repr__(self) -> str:
        return f"Secret({redact(self._value)!r})"


def reveal(value: str | Secret) -> str:
    """The raw value of a :class:`Secret`, or a plain string as is."""
    return value.reveal() if isinstance(value, Secret) else value
