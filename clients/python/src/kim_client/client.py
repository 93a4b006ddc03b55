"""Asyncio client for kim matchers.

A request is ``XADD``-ed to the label's stream; the reply comes back on one pub/sub channel
shared by every request of the client and is routed to its caller by ``rid``. This mirrors the
Rust client (``client/src/lib.rs``) step for step.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import unicodedata
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Dict, List, Optional, Type, Union, cast

import redis.asyncio as aioredis

from . import protocol
from .protocol import MAX_LIMIT, ErrorCode, MatchResponseDict

__all__ = ["RawDescriptor", "MatcherClient", "MatcherSession", "MatcherClientError", "ListenerGone"]

log = logging.getLogger("kim_client")

_U32_MAX = 2**32 - 1
BytesLike = Union[bytes, bytearray, memoryview]


@dataclass(frozen=True)
class RawDescriptor:
    """A descriptor as bytes plus its descriptor version.

    ``descriptor`` is either the bare payload (``dimensions × width`` bytes) or the LUNA SDK
    form (``b"dp\\0\\0"`` + version as u32 little-endian + payload); the matcher accepts both.
    """

    descriptor: BytesLike
    version: int


class MatcherClientError(Exception):
    """Base class of errors raised by this client (Redis errors are raised as they are)."""


class ListenerGone(MatcherClientError):
    """The reply subscription stopped (or the client was closed); create a new client."""


class MatcherClient:
    """Client of kim matchers over Redis streams.

    Create one with :meth:`create`; it holds one Redis connection pool and one pub/sub
    subscription on ``<prefix>kim:reply:<uuid4>``, shared by any number of concurrent requests.
    Use :meth:`session` to get a handle that sends matches, and :meth:`close` when done.
    """

    def __init__(
        self,
        *,
        redis: "aioredis.Redis",
        pool: "aioredis.ConnectionPool",
        pubsub: Any,
        channel: str,
        prefix: str,
        stream_maxlen: int,
        label_cache: float,
    ) -> None:
        """Internal: use :meth:`create`."""
        self._redis = redis
        self._pool = pool
        self._pubsub = pubsub
        self._channel = channel
        self._prefix = prefix
        self._stream_maxlen = stream_maxlen
        self._label_cache = label_cache
        self._pending: Dict[str, "asyncio.Future[MatchResponseDict]"] = {}
        self._live_labels: Dict[str, float] = {}
        self._closed = False
        self._listener: "asyncio.Task[None]" = asyncio.get_running_loop().create_task(
            self._listen(), name=f"kim-client-listener {channel}"
        )

    @classmethod
    async def create(
        cls,
        url: str,
        *,
        prefix: str = "",
        stream_maxlen: int = 100_000,
        label_cache: float = 2.0,
        max_connections: int = 64,
        subscribe_timeout: float = 10.0,
    ) -> "MatcherClient":
        """Connects to Redis at ``url`` (``redis://host:port/db``) and subscribes the reply channel.

        :param prefix: prepended to stream and registry key names (default empty, as LIM).
        :param stream_maxlen: ``MAXLEN ~`` bound of label streams.
        :param label_cache: seconds a positive label check is trusted before asking Redis again.
        :param max_connections: size of the command connection pool (callers wait for a free one).
        :param subscribe_timeout: seconds to wait for Redis to confirm the subscription.
        :raises redis.exceptions.RedisError: Redis cannot be reached.
        """
        if stream_maxlen < 1:
            raise ValueError("stream_maxlen must be positive")
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections)
        client = aioredis.Redis(connection_pool=pool)
        channel = f"{prefix}kim:reply:{protocol.new_rid()}"
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(channel)
            await _confirm_subscription(pubsub, subscribe_timeout)
        except BaseException:
            await _aclose(pubsub)
            await _aclose(client)
            await pool.disconnect()
            raise
        return cls(
            redis=client,
            pool=pool,
            pubsub=pubsub,
            channel=channel,
            prefix=prefix,
            stream_maxlen=stream_maxlen,
            label_cache=label_cache,
        )

    @property
    def response_channel(self) -> str:
        """The pub/sub channel replies of this client arrive on."""
        return self._channel

    @property
    def prefix(self) -> str:
        """Prefix of stream and registry keys."""
        return self._prefix

    def session(self) -> "MatcherSession":
        """A handle for sending matches: ``async with client.session() as conn: await conn.match(...)``.

        Sessions are cheap; all of them share the client's connections and reply subscription.
        """
        return MatcherSession(self)

    async def match(
        self,
        descriptor: RawDescriptor,
        label: str,
        limit: int = 1,
        lunaRequestId: Optional[str] = None,
        timeout: float = 10.0,
    ) -> MatchResponseDict:
        """Matches one descriptor against ``label``; see :meth:`MatcherSession.match`."""
        if self._closed:
            raise ListenerGone("the client is closed")
        if not isinstance(descriptor, RawDescriptor) and not (
            hasattr(descriptor, "descriptor") and hasattr(descriptor, "version")
        ):
            raise TypeError("descriptor must be a RawDescriptor")
        payload = descriptor.descriptor
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise TypeError("descriptor.descriptor must be bytes")
        if not isinstance(label, str):
            raise TypeError("label must be a str")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout < 0:
            raise ValueError("timeout must be a non-negative number of seconds")

        luna_id = protocol.new_luna_request_id() if lunaRequestId is None else str(lunaRequestId)
        rid = protocol.new_rid()
        if not label or not _is_int(limit) or not 1 <= limit <= MAX_LIMIT:
            why = f"label must be non-empty and limit in 1..={MAX_LIMIT}"
            return protocol.failed_response(rid, luna_id, ErrorCode.VALIDATION_FAILED, why)
        version = descriptor.version
        if not _is_int(version) or not 0 <= version <= _U32_MAX:
            why = f"descriptor version must be an integer in 0..={_U32_MAX}"
            return protocol.failed_response(rid, luna_id, ErrorCode.VALIDATION_FAILED, why)
        if not await self.checkMatchingLabel(label):
            why = f"no matcher serves label {_rust_debug(label)}"
            return protocol.failed_response(rid, luna_id, ErrorCode.INDEX_NOT_FOUND, why)
        if self._listener.done():
            raise ListenerGone("the reply listener stopped; create a new client")

        timeout_ms = round(timeout * 1e9) // 1_000_000  # as Rust's Duration::from_secs_f64(t).as_millis()
        fields = protocol.request_fields(
            descriptor=bytes(payload),
            version=version,
            label=label,
            limit=limit,
            response_channel=self._channel,
            luna_request_id=luna_id,
            rid=rid,
            deadline=protocol.unix_ms() + timeout_ms,
        )
        args: List[Any] = ["XADD", protocol.stream_key(self._prefix, label), "MAXLEN", "~", self._stream_maxlen, "*"]
        for k, v in fields:
            args += [k, v]
        fut: "asyncio.Future[MatchResponseDict]" = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            await cast(Any, self._redis).execute_command(*args)
            try:
                return await asyncio.wait_for(fut, timeout)
            except asyncio.TimeoutError:
                why = f"no reply within {timeout_ms} ms"
                return protocol.failed_response(rid, luna_id, ErrorCode.TIMEOUT, why)
        finally:
            # Forget the rid whatever happened (reply, timeout, Redis error, cancellation).
            self._pending.pop(rid, None)

    async def readMatchingLabels(self) -> List[str]:
        """Labels some live matcher serves, sorted (each appears once)."""
        keys = await self._scan(protocol.registry_pattern_all(self._prefix), first_only=False)
        labels = {protocol.label_of_registry_key(self._prefix, k) for k in keys}
        return sorted(label for label in labels if label is not None)

    async def checkMatchingLabel(self, label: str) -> bool:
        """True iff some live matcher serves ``label`` (positive answers are cached briefly)."""
        seen = self._live_labels.get(label)
        if seen is not None and time.monotonic() - seen < self._label_cache:
            return True
        live = bool(await self._scan(protocol.registry_pattern(self._prefix, label), first_only=True))
        if live:
            self._live_labels[label] = time.monotonic()
        else:
            self._live_labels.pop(label, None)
        return live

    async def readLabelInfo(self, label: str) -> List[Dict[str, Any]]:
        """What each live matcher reports for ``label``: dicts with version, dimensions,
        encoding, metric, vectors and snapshot (one per matcher)."""
        out: List[Dict[str, Any]] = []
        for key in await self._scan(protocol.registry_pattern(self._prefix, label), first_only=False):
            raw = await self._redis.get(key)
            if raw is None:
                continue
            try:
                info = json.loads(raw)
            except ValueError:
                continue
            if isinstance(info, dict):
                out.append(info)
        return out

    async def close(self) -> None:
        """Stops the reply listener and closes the connections. Idempotent.

        Matches still waiting fail with :class:`ListenerGone`.
        """
        if self._closed:
            return
        self._closed = True
        self._listener.cancel()
        try:
            await self._listener
        except (asyncio.CancelledError, Exception):
            pass
        try:
            await self._pubsub.unsubscribe(self._channel)
        except Exception:  # the connection may already be gone
            pass
        await _aclose(self._pubsub)
        await _aclose(self._redis)
        await self._pool.disconnect()

    async def __aenter__(self) -> "MatcherClient":
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.close()

    async def _scan(self, pattern: str, first_only: bool) -> List[str]:
        cursor: Any = 0
        found: List[str] = []
        while True:
            cursor, keys = await self._redis.scan(cursor=cursor, match=pattern, count=1000)
            for k in keys:
                try:
                    found.append(k.decode() if isinstance(k, bytes) else str(k))
                except UnicodeDecodeError:
                    continue
            if int(cursor) == 0 or (first_only and found):
                return found

    async def _listen(self) -> None:
        """Routes replies on the response channel to the waiting callers, by ``rid``."""
        try:
            while True:
                msg = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                if not msg or msg.get("type") != "message":
                    continue
                try:
                    resp = json.loads(msg["data"])
                    rid = resp["rid"]
                except (ValueError, KeyError, TypeError) as e:
                    log.warning("unparseable reply on response channel: %s", e)
                    continue
                fut = self._pending.pop(rid, None) if isinstance(rid, str) else None
                if fut is not None and not fut.done():
                    fut.set_result(resp)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.warning("reply subscription closed: %s", e)
        finally:
            pending, self._pending = self._pending, {}
            for fut in pending.values():
                if not fut.done():
                    fut.set_exception(ListenerGone("the reply listener stopped; create a new client"))


class MatcherSession:
    """A handle on a :class:`MatcherClient` for sending matches; use as ``async with``."""

    def __init__(self, client: MatcherClient) -> None:
        self._client = client
        self._open = False

    async def __aenter__(self) -> "MatcherSession":
        if self._client._closed:
            raise ListenerGone("the client is closed")
        self._open = True
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self._open = False

    async def match(
        self,
        descriptor: RawDescriptor,
        label: str,
        limit: int = 1,
        lunaRequestId: Optional[str] = None,
        timeout: float = 10.0,
    ) -> MatchResponseDict:
        """Matches one descriptor against the index of ``label``.

        Returns the response dict ``{"rid", "luna_request_id", "status_code", "result",
        "error"}``: ``status_code`` 201 and ``result`` = ``[[id, similarity], ...]`` (at most
        ``limit``, most similar first) on success. Protocol failures come back as a response
        with ``error`` = ``{"error_code", "desc", "detail", "link"}``, never as an exception:
        26301 (400) for an empty label or a limit outside 1..=1000 (nothing is sent), 26304 (404)
        when no matcher serves the label (nothing is sent), 26309 (504) when no reply arrives
        within ``timeout`` seconds, and whatever the matcher answers otherwise.

        :param descriptor: the descriptor bytes and version.
        :param label: the matching list (stream) to search.
        :param limit: how many candidates to return, 1..=1000.
        :param lunaRequestId: passed through to the reply; generated as
            ``"<unix seconds>,<uuid4>"`` when ``None``.
        :param timeout: seconds to wait for the reply; also sets the request's deadline.
        :raises ListenerGone: the reply subscription stopped or the client was closed.
        :raises redis.exceptions.RedisError: Redis itself failed.
        """
        if not self._open:
            raise MatcherClientError("use the session as `async with client.session() as conn`")
        return await self._client.match(
            descriptor=descriptor, label=label, limit=limit, lunaRequestId=lunaRequestId, timeout=timeout
        )


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _rust_debug(s: str) -> str:
    """``s`` quoted as Rust's ``{:?}`` prints a string (for error details identical to Rust's)."""
    out = ['"']
    for c in s:
        if c == "\\" or c == '"':
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif c == "\r":
            out.append("\\r")
        elif c == "\t":
            out.append("\\t")
        elif c == "\0":
            out.append("\\0")
        elif unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cn", "Co", "Cs"):
            out.append(f"\\u{{{ord(c):x}}}")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


async def _confirm_subscription(pubsub: Any, timeout: float) -> None:
    """Waits until Redis confirms the SUBSCRIBE, so no reply can be published before it."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise MatcherClientError(f"Redis did not confirm the subscription within {timeout} s")
        msg = await pubsub.get_message(timeout=min(left, 1.0))
        if msg and msg.get("type") == "subscribe":
            return


async def _aclose(obj: Any) -> None:
    """Closes a redis-py object whatever its version calls the method (``aclose`` since 5.0.1)."""
    closer = getattr(obj, "aclose", None) or getattr(obj, "close", None)
    if closer is not None:
        try:
            await closer()
        except Exception:
            pass
