"""The Redis-stream matching protocol, as the Rust crate ``kim_api`` defines it.

Everything a client and a matcher must agree on lives here: request field names, the response
shape, error codes with their status codes, descriptions and documentation links, registry key
names and SCAN patterns, and the id formats. Keep it byte-for-byte in step with
``api/src/lib.rs``.
"""

from __future__ import annotations

import enum
import time
import uuid
from typing import Any, TypedDict

__all__ = [
    "GROUP",
    "STATUS_OK",
    "MAX_LIMIT",
    "ERROR_DOC",
    "ErrorCode",
    "MatchErrorDict",
    "MatchResponseDict",
    "ok_response",
    "failed_response",
    "request_fields",
    "stream_key",
    "registry_key",
    "registry_pattern",
    "registry_pattern_all",
    "label_of_registry_key",
    "glob_escape",
    "new_luna_request_id",
    "new_rid",
    "unix_ms",
]

#: Consumer group every matcher joins on a label's stream.
GROUP = "kim-matchers"
#: Status code of a successful match.
STATUS_OK = 201
#: Largest ``limit`` a request may ask for.
MAX_LIMIT = 1000
#: Where ``link`` in an error points: the error reference shipped in the repository.
ERROR_DOC = "docs/errors.md"


class ErrorCode(enum.IntEnum):
    """Errors a match can end with (the numeric value is the ``error_code``)."""

    VALIDATION_FAILED = 26301
    DECODE_FAILED = 26302
    SEARCH_FAILED = 26303
    INDEX_NOT_FOUND = 26304
    VERSION_MISMATCH = 26305
    INDEX_CORRUPTED = 26308
    TIMEOUT = 26309

    @property
    def code(self) -> int:
        """The numeric error code, e.g. ``26304``."""
        return int(self)

    @property
    def status(self) -> int:
        """HTTP-like status code of a response failing with this error."""
        return _STATUS[self]

    @property
    def desc(self) -> str:
        """Fixed human-readable description (same text as the Rust matcher sends)."""
        return _DESC[self]

    @property
    def link(self) -> str:
        """Link to this error's entry in the project's error documentation."""
        return f"{ERROR_DOC}#{self.code}"

    def error(self, detail: str) -> MatchErrorDict:
        """The ``error`` object of a response failing with this code."""
        return {"error_code": self.code, "desc": self.desc, "detail": detail, "link": self.link}


_STATUS: dict[ErrorCode, int] = {
    ErrorCode.VALIDATION_FAILED: 400,
    ErrorCode.DECODE_FAILED: 400,
    ErrorCode.VERSION_MISMATCH: 400,
    ErrorCode.INDEX_NOT_FOUND: 404,
    ErrorCode.SEARCH_FAILED: 500,
    ErrorCode.INDEX_CORRUPTED: 500,
    ErrorCode.TIMEOUT: 504,
}

_DESC: dict[ErrorCode, str] = {
    ErrorCode.VALIDATION_FAILED: "Request validation failed",
    ErrorCode.DECODE_FAILED: "Descriptor cannot be decoded",
    ErrorCode.SEARCH_FAILED: "Search failed",
    ErrorCode.INDEX_NOT_FOUND: "Index for label not found",
    ErrorCode.VERSION_MISMATCH: "Descriptor version mismatch",
    ErrorCode.INDEX_CORRUPTED: "Index corrupted",
    ErrorCode.TIMEOUT: "Matching timeout",
}


class MatchErrorDict(TypedDict):
    """The ``error`` object of a response."""

    error_code: int
    desc: str
    detail: str
    link: str


class MatchResponseDict(TypedDict):
    """What a matcher publishes on the response channel (and what ``match`` returns).

    ``result`` holds ``[id, similarity]`` pairs, most similar first; ``status_code`` is 201 on
    success, otherwise ``error`` is set and ``result`` is ``None`` (JSON ``null``).
    """

    rid: str
    luna_request_id: str
    status_code: int
    result: list[list[Any]] | None
    error: MatchErrorDict | None


def ok_response(rid: str, luna_request_id: str, result: list[list[Any]]) -> MatchResponseDict:
    """A successful response (keys in the order the matcher serialises them)."""
    return {"rid": rid, "luna_request_id": luna_request_id, "status_code": STATUS_OK, "result": result, "error": None}


def failed_response(rid: str, luna_request_id: str, code: ErrorCode, detail: str) -> MatchResponseDict:
    """A failed response, as the matcher would build it for ``code`` (``result`` is ``None``)."""
    return {
        "rid": rid,
        "luna_request_id": luna_request_id,
        "status_code": code.status,
        "result": None,
        "error": code.error(detail),
    }


def request_fields(
    *,
    descriptor: bytes,
    version: int,
    label: str,
    limit: int,
    response_channel: str,
    luna_request_id: str,
    rid: str,
    deadline: int | None,
    threshold: float | None = None,
) -> list[tuple[str, bytes]]:
    """Stream entry fields of a request, in the order the protocol lists them.

    ``deadline`` is unix milliseconds; ``None`` leaves the field out (no deadline).
    ``threshold`` is the minimum similarity of returned candidates; ``None`` leaves it out.
    """
    fields: list[tuple[str, bytes]] = [
        ("descriptor", bytes(descriptor)),
        ("version", str(version).encode()),
        ("label", label.encode()),
        ("limit", str(limit).encode()),
        ("response_channel", response_channel.encode()),
        ("luna_request_id", luna_request_id.encode()),
        ("rid", rid.encode()),
    ]
    if deadline is not None:
        fields.append(("deadline", str(deadline).encode()))
    if threshold is not None:
        fields.append(("threshold", repr(float(threshold)).encode()))
    return fields


def stream_key(prefix: str, label: str) -> str:
    """Stream key of a label."""
    return f"{prefix}{label}"


def registry_key(prefix: str, label: str, matcher_id: str) -> str:
    """Registry key a matcher keeps alive for each label it serves."""
    return f"{prefix}matching_label__{label}__{matcher_id}"


def registry_pattern(prefix: str, label: str) -> str:
    """SCAN pattern matching every matcher's registry key of ``label`` (glob characters escaped)."""
    return f"{glob_escape(prefix)}matching_label__{glob_escape(label)}__*"


def registry_pattern_all(prefix: str) -> str:
    """SCAN pattern for all registry keys."""
    return f"{glob_escape(prefix)}matching_label__*"


def label_of_registry_key(prefix: str, key: str) -> str | None:
    """The label of a registry key: the part between ``matching_label__`` and the last ``__``."""
    head = prefix + "matching_label__"
    if not key.startswith(head):
        return None
    rest = key[len(head) :]
    i = rest.rfind("__")
    return rest[:i] if i >= 0 else None


def glob_escape(s: str) -> str:
    """Escapes Redis glob characters (``* ? [ ] \\``) so ``s`` matches only itself."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in s)


def new_luna_request_id() -> str:
    """A LUNA-style request id: ``"<unix seconds>,<uuid4>"``."""
    return f"{unix_ms() // 1000},{uuid.uuid4()}"


def new_rid() -> str:
    """A request id (uuid4, hyphenated)."""
    return str(uuid.uuid4())


def unix_ms() -> int:
    """Current time as unix milliseconds."""
    return time.time_ns() // 1_000_000
