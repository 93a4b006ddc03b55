"""Protocol helpers, checked against the Rust definitions in api/src/lib.rs (no processes)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from kim_client import protocol
from kim_client.client import _rust_debug
from kim_client.protocol import ErrorCode

API_RS = Path(__file__).resolve().parents[3] / "api" / "src" / "lib.rs"


def rust_api() -> str:
    if not API_RS.exists():
        pytest.skip(f"{API_RS} not found")
    return API_RS.read_text()


def rust_arms(src: str, fn: str) -> dict[str, str]:
    """`ErrorCode::A | ErrorCode::B => value` arms of `fn <fn>(self)` in the Rust source."""
    body = src[src.index(f"pub fn {fn}(self)") :]
    body = body[: body.index("\n    }\n")]
    out: dict[str, str] = {}
    for names, value in re.findall(r"((?:ErrorCode::\w+\s*\|?\s*)+)=>\s*([^,\n]+)", body):
        for n in re.findall(r"ErrorCode::(\w+)", names):
            out[n] = value.strip()
    return out


def snake(camel: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", camel).upper()


def test_error_codes_match_rust() -> None:
    src = rust_api()
    codes = dict(re.findall(r"^\s+(\w+) = (\d+),", src, re.M))
    assert {snake(k): int(v) for k, v in codes.items()} == {e.name: e.value for e in ErrorCode}
    descs = rust_arms(src, "desc")
    statuses = rust_arms(src, "status")
    assert len(descs) == len(statuses) == len(ErrorCode)
    for name, desc in descs.items():
        e = ErrorCode[snake(name)]
        assert f'"{e.desc}"' == desc, name
        assert str(e.status) == statuses[name], name
    assert f'pub const ERROR_DOC: &str = "{protocol.ERROR_DOC}";' in src
    assert f'pub const GROUP: &str = "{protocol.GROUP}";' in src
    assert f"pub const MAX_LIMIT: u32 = {protocol.MAX_LIMIT};" in src
    assert f"pub const STATUS_OK: u16 = {protocol.STATUS_OK};" in src


def test_error_objects_and_responses() -> None:
    assert ErrorCode.TIMEOUT.error("d") == {
        "error_code": 26309,
        "desc": "Matching timeout",
        "detail": "d",
        "link": "docs/errors.md#26309",
    }
    r = protocol.failed_response("r", "l", ErrorCode.VERSION_MISMATCH, "x")
    assert list(r) == ["rid", "luna_request_id", "status_code", "result", "error"]
    assert (r["status_code"], r["result"], r["error"]["error_code"]) == (400, None, 26305)
    assert protocol.ok_response("r", "l", [["a", 0.5]])["status_code"] == 201
    assert [(e.code, e.status) for e in ErrorCode] == [
        (26301, 400),
        (26302, 400),
        (26303, 500),
        (26304, 404),
        (26305, 400),
        (26308, 500),
        (26309, 504),
    ]


def test_registry_keys_and_patterns() -> None:
    k = protocol.registry_key("p:", "a__b", "m1")
    assert k == "p:matching_label__a__b__m1"
    assert protocol.label_of_registry_key("p:", k) == "a__b"
    assert protocol.label_of_registry_key("q:", k) is None
    assert protocol.label_of_registry_key("", "matching_label__nounderscores") is None
    assert protocol.registry_pattern("", "x*y") == "matching_label__x\\*y__*"
    assert protocol.registry_pattern("a?[", "l]\\") == "a\\?\\[matching_label__l\\]\\\\__*"
    assert protocol.registry_pattern_all("p*") == "p\\*matching_label__*"
    assert protocol.stream_key("p:", "faces") == "p:faces"


def test_request_fields_order() -> None:
    f = protocol.request_fields(
        descriptor=b"\x00\x01",
        version=59,
        label="faces",
        limit=3,
        response_channel="ch",
        luna_request_id="1,x",
        rid="r",
        deadline=123,
    )
    assert f == [
        ("descriptor", b"\x00\x01"),
        ("version", b"59"),
        ("label", b"faces"),
        ("limit", b"3"),
        ("response_channel", b"ch"),
        ("luna_request_id", b"1,x"),
        ("rid", b"r"),
        ("deadline", b"123"),
    ]
    f = protocol.request_fields(
        descriptor=b"", version=1, label="l", limit=1, response_channel="c", luna_request_id="", rid="r", deadline=None
    )
    assert [k for k, _ in f] == [
        "descriptor",
        "version",
        "label",
        "limit",
        "response_channel",
        "luna_request_id",
        "rid",
    ]


def test_ids() -> None:
    secs, uuid = protocol.new_luna_request_id().split(",")
    assert abs(int(secs) - time.time()) < 5
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", uuid)
    assert protocol.new_rid() != protocol.new_rid()
    assert abs(protocol.unix_ms() - time.time() * 1000) < 5000


def test_rust_debug_quoting() -> None:
    assert _rust_debug("faces") == '"faces"'
    assert _rust_debug('a"b\\c\nd\te\x01') == '"a\\"b\\\\c\\nd\\te\\u{1}"'
    assert _rust_debug("лица") == '"лица"'
