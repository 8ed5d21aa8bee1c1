"""Logging: readable lines in development, one JSON object per line in production.

Every record that reaches the handler passes two filters first:

- :class:`RequestContextFilter` adds the HTTP request's id and, once the API key is known,
  its tenant id. A record that already names a ``request_id`` of its own (fal's request id
  in ``fal.*`` and ``training.*`` events) keeps it, and the HTTP one goes into
  ``http_request_id`` instead.
- :class:`RedactionFilter` keeps secrets out: values under sensitive keys (authorization,
  api_key, secret, signature, token, ...) are masked at any depth, ``avk_...`` API keys,
  ``whsec_...`` webhook secrets, ``Key ...``/``Bearer ...`` credentials, signed URL query
  parameters, URL passwords and fal webhook tokens are masked in messages and values, the
  configured secrets themselves (:func:`register_secrets`) are replaced wherever they
  appear, and bytes are never printed (only their length). The filter edits the record in
  place, so other handlers (pytest's caplog) see the redacted record too; the formatters
  run the text patterns once more over the finished line, exception included.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import IO, Any

from pydantic import SecretStr

from avatar_api.observability.context import current_request

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "color_message",  # uvicorn duplicates its message with ANSI colours
}

REDACTED = "[REDACTED]"
_SENSITIVE_KEY = re.compile(
    r"(?i)(authorization|api[_-]?key|secret|signature|token|fal[_-]?key|password|passwd"
    r"|cookie|credential)"
)
# (pattern, replacement, needles): a pattern runs only on text that contains one of its
# needles (compared with the lower-cased text), which every match must contain. Most log
# values (ids, names, numbers) contain none, and skip the regular expressions entirely.
_PATTERNS: tuple[tuple[re.Pattern[str], str, tuple[str, ...]], ...] = (
    # scheme://user:password@host
    (
        re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]+:)[^@\s/]+@"),
        rf"\1{REDACTED}@",
        ("://",),
    ),
    # The per-training (and per-generation) token in fal webhook URLs, plain or URL-encoded.
    (
        re.compile(
            r"(?i)((?:/|%2F)webhooks(?:/|%2F)fal(?:/|%2F)(?:[a-z_-]+(?:/|%2F))?"
            r"[0-9a-f-]{36}(?:/|%2F))[A-Za-z0-9_-]+"
        ),
        rf"\1{REDACTED}",
        ("webhooks",),
    ),
    # Signed URLs: signature=, X-Amz-Signature=, X-Amz-Credential=, token=, ...
    (
        re.compile(
            r"(?i)([?&;](?:[a-z0-9_-]*(?:signature|token|secret|sig|credential|key)"
            r"[a-z0-9_-]*)=)[^&\s\"'#\\]+"
        ),
        rf"\1{REDACTED}",
        ("=",),
    ),
    (re.compile(r"\bavk_[A-Za-z0-9_-]{8,}"), f"avk_{REDACTED}", ("avk_",)),
    (re.compile(r"\bwhsec_[A-Za-z0-9+/=_-]{8,}"), f"whsec_{REDACTED}", ("whsec_",)),
    # Authorization header values: fal's "Key id:secret" (a digit or colon in it, so that
    # "Foreign Key constraint" stays readable), bearer and basic credentials.
    (re.compile(r"\bKey\s+(?=[^\s]*[\d:])[A-Za-z0-9._~+/:=-]{8,}"), f"Key {REDACTED}", ("key",)),
    (
        re.compile(r"\b([Bb]earer|[Bb]asic)\s+[A-Za-z0-9._~+/:=-]{8,}"),
        rf"\1 {REDACTED}",
        ("bearer", "basic"),
    ),
)
# Every needle, lower-cased: most values contain none and skip every pattern after a few
# substring checks (cheaper than one case-insensitive regular expression over short text).
_NEEDLES = tuple(sorted({n for _, _, needles in _PATTERNS for n in needles}))
_MIN_SECRET_CHARS = 8
_known_secrets: set[str] = set()
_secrets_longest_first: tuple[str, ...] = ()


def register_secret_values(*values: str | None) -> None:
    """Mask these exact strings wherever they appear in a log line."""
    for value in values:
        if not value:
            continue
        parts = [value, *value.split(":")] if ":" in value else [value]  # fal keys: id:secret
        _known_secrets.update(p for p in parts if len(p) >= _MIN_SECRET_CHARS)
    global _secrets_longest_first
    _secrets_longest_first = tuple(sorted(_known_secrets, key=len, reverse=True))


def register_secrets(settings: object) -> None:
    """Register every ``SecretStr`` field of a settings object."""
    fields = getattr(type(settings), "model_fields", {})
    for name in fields:
        value = getattr(settings, name, None)
        if isinstance(value, SecretStr):
            register_secret_values(value.get_secret_value())


def redact_text(text: str) -> str:
    for secret in _secrets_longest_first:
        if secret in text:
            text = text.replace(secret, REDACTED)
    lowered = text.lower()
    if not any(needle in lowered for needle in _NEEDLES):
        return text
    for pattern, replacement, needles in _PATTERNS:
        if any(needle in lowered for needle in needles):
            text = pattern.sub(replacement, text)
            lowered = text.lower()
    return text


@functools.lru_cache(maxsize=1024)
def _is_sensitive_key(key: str) -> bool:
    """Whether values under this key are masked; keys are few (field names), so cached."""
    return _SENSITIVE_KEY.search(key) is not None


def _bytes_placeholder(value: bytes | bytearray | memoryview) -> str:
    return f"<{len(value)} bytes>"


def redact_value(value: object, key: str | None = None) -> object:
    """``value`` with secrets masked; containers are copied, never changed in place."""
    if key is not None and value is not None and _is_sensitive_key(key):
        return REDACTED
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return _bytes_placeholder(value)
    if isinstance(value, Mapping):
        return {str(k): redact_value(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value(v) for v in value]
    return redact_text(str(value))


class RedactionFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.args = _safe_args(record.args)
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: keep the raw message, redacted
            message = str(record.msg)
        record.msg = redact_text(message)
        record.args = None
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD:
                record.__dict__[key] = redact_value(value, key)
        return True


def _safe_args(args: tuple[object, ...] | Mapping[str, object]) -> Any:
    def safe(value: object) -> object:
        return _bytes_placeholder(value) if isinstance(value, bytes | bytearray) else value

    if isinstance(args, Mapping):
        return {k: safe(v) for k, v in args.items()}
    return tuple(safe(v) for v in args)


class RequestContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        context = current_request()
        if context is None:
            return True
        fields = record.__dict__
        existing = fields.get("request_id")
        if existing is None:
            fields["request_id"] = context.request_id
        elif existing != context.request_id:
            fields["http_request_id"] = context.request_id
        if context.tenant_id is not None and fields.get("tenant_id") is None:
            fields["tenant_id"] = str(context.tenant_id)
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and v is not None}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        entry.update(_extras(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return redact_text(json.dumps(entry, default=str))


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        clock = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        line = f"{clock} {record.levelname:<7} {record.getMessage()}"
        if extras:
            line += f"  {extras}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return redact_text(line)


def make_handler(fmt: str, stream: IO[str] | None = None) -> logging.Handler:
    """The service's log handler: request context, redaction, then the chosen format."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    handler.addFilter(RequestContextFilter())
    handler.addFilter(RedactionFilter())
    return handler


# Third-party loggers that log every outbound request's full URL (signed archive URLs,
# webhook URLs) at INFO: our own fal.* lines already record those calls.
_CHATTY_LOGGERS: Iterable[str] = ("httpx", "httpcore")


def configure_logging(*, level: str, fmt: str) -> None:
    root = logging.getLogger()
    root.handlers[:] = [make_handler(fmt)]
    root.setLevel(level.upper())
    chatty_level = logging.DEBUG if root.level <= logging.DEBUG else logging.WARNING
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(chatty_level)
