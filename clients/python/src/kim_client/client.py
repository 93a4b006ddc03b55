"""Asyncio client for kim matchers.

A request is ``XADD``-ed to the label's stream; the reply comes back on one pub/sub channel
shared by every request of the client and is routed to its caller by ``rid``. This mirrors the
Rust client (``client/src/lib.rs``) step for step, including what happens when Redis restarts
or fails over: commands are retried with backoff, the reply subscription is re-established,
and a request whose reply may have been lost is sent again once if its deadline allows, else
answered with the timeout error 26309. A call never outlives its timeout.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
import unicodedata
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Union, cast

import redis.asyncio as aioredis
import redis.exceptions as rexc
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from . import protocol
from .connection import RedisSettings, redact
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
    """The client was closed while a match was waiting (the listener itself never gives up:
    it re-subscribes after Redis restarts or fails over)."""


# Failures a reconnect can fix; anything else (authentication, permissions) is raised.
_RETRYABLE = (rexc.ConnectionError, rexc.TimeoutError, rexc.ReadOnlyError, rexc.BusyLoadingError, OSError)


class _Backoff:
    """Capped, jittered exponential backoff (the delay is uniform in [d/2, d])."""

    def __init__(self, base: float, cap: float) -> None:
        self.base, self.cap, self.next = base, cap, base

    def delay(self) -> float:
        d = self.next
        self.next = min(d * 2, self.cap)
        return d / 2 + random.random() * d / 2

    def reset(self) -> None:
        self.next = self.base


@dataclass
class _InFlight:
    """What is needed to send a request again after its reply may have been lost."""

    args: list[Any]
    rid: str
    luna_id: str
    deadline: float
    sent_under: int | None = None
    resent: bool = False


class MatcherClient:
    """Client of kim matchers over Redis streams.

    Create one with :meth:`create`; it holds one Redis connection pool and one pub/sub
    subscription on ``<prefix>kim:reply:<uuid4>``, shared by any number of concurrent requests.
    Use :meth:`session` to get a handle that sends matches, and :meth:`close` when done.
    """

    def __init__(
        self,
        *,
        redis: aioredis.Redis,
        pool: aioredis.ConnectionPool,
        pubsub: Any,
        channel: str,
        prefix: str,
        stream_maxlen: int,
        label_cache: float,
        reconnect_grace: float = 5.0,
        shown_url: str = "",
    ) -> None:
        """Internal: use :meth:`create`."""
        self._redis = redis
        self._pool = pool
        self._pubsub = pubsub
        self._channel = channel
        self._prefix = prefix
        self._stream_maxlen = stream_maxlen
        self._label_cache = label_cache
        self._reconnect_grace = reconnect_grace
        self._shown_url = shown_url
        self._pending: dict[str, asyncio.Future[MatchResponseDict]] = {}
        self._inflight: dict[str, _InFlight] = {}
        self._live_labels: dict[str, float] = {}
        self._closed = False
        # Generation of the live reply subscription; cleared while it is re-established.
        self._generation = 1
        self._subscribed = asyncio.Event()
        self._subscribed.set()
        self._last_failure: float | None = None
        self._listener: asyncio.Task[None] = asyncio.get_running_loop().create_task(
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
        username: str | None = None,
        password: str | None = None,
        ssl_ca_certs: str | None = None,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
        reconnect_grace: float = 5.0,
    ) -> MatcherClient:
        """Connects to Redis at ``url`` and subscribes the reply channel.

        ``url`` is ``redis://host:port/db``, ``rediss://host:port/db`` (TLS) or
        ``redis+sentinel://host:port,host:port/master/db``. Credentials and TLS files default to
        ``KIM_REDIS_USERNAME``, ``KIM_REDIS_PASSWORD`` / ``KIM_REDIS_PASSWORD_FILE``,
        ``KIM_REDIS_CA``, ``KIM_REDIS_CERT`` and ``KIM_REDIS_KEY``; keep passwords out of URLs.

        :param prefix: prepended to stream and registry key names (default empty, as LIM).
        :param stream_maxlen: ``MAXLEN ~`` bound of label streams.
        :param label_cache: seconds a positive label check is trusted before asking Redis again.
        :param max_connections: size of the command connection pool (callers wait for a free one).
        :param subscribe_timeout: seconds to wait for Redis to confirm the subscription.
        :param reconnect_grace: for this long after a Redis failure an unknown label is asked
            again until the deadline instead of failing with 26304 (a restarted Redis has an
            empty registry until the matchers re-register).
        :raises ValueError: the URL or the TLS settings are invalid (the URL shown redacted).
        :raises redis.exceptions.RedisError: Redis cannot be reached or refused the credentials.
        """
        if stream_maxlen < 1:
            raise ValueError("stream_maxlen must be positive")
        settings = RedisSettings.from_url(
            url, username=username, password=password, ca=ssl_ca_certs, cert=ssl_certfile, key=ssl_keyfile
        )
        client = settings.client(max_connections)
        pool = client.connection_pool
        channel = f"{prefix}kim:reply:{protocol.new_rid()}"
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(channel)
            await _confirm_subscription(pubsub, subscribe_timeout)
            _no_silent_reconnect(pubsub)
        except rexc.ConnectionError as e:
            await _aclose(pubsub)
            await _aclose(client)
            await pool.disconnect()
            if isinstance(e, rexc.AuthenticationError):
                raise
            hint = "" if settings.tls else " (if this Redis only accepts TLS, use rediss:// with KIM_REDIS_CA)"
            raise rexc.ConnectionError(f"Redis at {redact(url)}: {e}{hint}") from None
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
            reconnect_grace=reconnect_grace,
            shown_url=redact(url),
        )

    @property
    def response_channel(self) -> str:
        """The pub/sub channel replies of this client arrive on."""
        return self._channel

    @property
    def prefix(self) -> str:
        """Prefix of stream and registry keys."""
        return self._prefix

    def session(self) -> MatcherSession:
        """A handle for sending matches: ``async with client.session() as conn: await conn.match(...)``.

        Sessions are cheap; all of them share the client's connections and reply subscription.
        """
        return MatcherSession(self)

    async def match(
        self,
        descriptor: RawDescriptor,
        label: str,
        limit: int = 1,
        lunaRequestId: str | None = None,
        timeout: float = 10.0,
        threshold: float | None = None,
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
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not math.isfinite(timeout)
            or timeout < 0
        ):
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
        if threshold is not None and not (
            not isinstance(threshold, bool)
            and isinstance(threshold, (int, float))
            and math.isfinite(threshold)
            and 0 <= threshold <= 1
        ):
            why = "threshold must be a similarity in [0, 1]"
            return protocol.failed_response(rid, luna_id, ErrorCode.VALIDATION_FAILED, why)
        deadline = time.monotonic() + timeout
        backoff = _Backoff(0.02, 0.5)
        timeout_ms = round(timeout * 1e9) // 1_000_000  # as Rust's Duration::from_secs_f64(t).as_millis()

        def timed_out() -> MatchResponseDict:
            return protocol.failed_response(rid, luna_id, ErrorCode.TIMEOUT, f"no reply within {timeout_ms} ms")

        # Find the label, riding out Redis outages and a registry not yet rewritten after one.
        while True:
            try:
                if await self.checkMatchingLabel(label):
                    break
                if not self._just_failed():
                    why = f"no matcher serves label {_rust_debug(label)}"
                    return protocol.failed_response(rid, luna_id, ErrorCode.INDEX_NOT_FOUND, why)
            except _RETRYABLE:
                self._last_failure = time.monotonic()
            if not await _sleep_before(deadline, backoff.delay()):
                return timed_out()
        if self._closed:
            raise ListenerGone("the client is closed")

        fields = protocol.request_fields(
            descriptor=bytes(payload),
            version=version,
            label=label,
            limit=limit,
            response_channel=self._channel,
            luna_request_id=luna_id,
            rid=rid,
            deadline=protocol.unix_ms() + timeout_ms,
            threshold=threshold,
        )
        args: list[Any] = ["XADD", protocol.stream_key(self._prefix, label), "MAXLEN", "~", self._stream_maxlen, "*"]
        for k, v in fields:
            args += [k, v]
        fut: asyncio.Future[MatchResponseDict] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        entry = _InFlight(args, rid, luna_id, deadline)
        self._inflight[rid] = entry
        try:
            # Send once the reply subscription is live, so the reply cannot race past it.
            while True:
                try:
                    await asyncio.wait_for(self._subscribed.wait(), max(0.0, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    return timed_out()
                generation = self._generation
                try:
                    await cast(Any, self._redis).execute_command(*args)
                    entry.sent_under = generation
                    break
                except _RETRYABLE:
                    self._last_failure = time.monotonic()
                    if not await _sleep_before(deadline, backoff.delay()):
                        return timed_out()
            try:
                return await asyncio.wait_for(fut, max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                return timed_out()
        finally:
            # Forget the rid whatever happened (reply, timeout, Redis error, cancellation).
            self._pending.pop(rid, None)
            self._inflight.pop(rid, None)

    async def readMatchingLabels(self) -> list[str]:
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

    async def readLabelInfo(self, label: str) -> list[dict[str, Any]]:
        """What each live matcher reports for ``label``: dicts with version, dimensions,
        encoding, metric, vectors (live rows), snapshot, and the refresh state on top of the
        snapshot: deltas (applied), tail (rows added) and tombstones (rows removed); one per
        matcher."""
        out: list[dict[str, Any]] = []
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

    async def __aenter__(self) -> MatcherClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _scan(self, pattern: str, first_only: bool) -> list[str]:
        cursor: Any = 0
        found: list[str] = []
        while True:
            cursor, keys = await self._redis.scan(cursor=cursor, match=pattern, count=1000)
            for k in keys:
                try:
                    found.append(k.decode() if isinstance(k, bytes) else str(k))
                except UnicodeDecodeError:
                    continue
            if int(cursor) == 0 or (first_only and found):
                return found

    def _just_failed(self) -> bool:
        """True while Redis may still be missing a registry it lost in a restart."""
        return self._last_failure is not None and time.monotonic() - self._last_failure < self._reconnect_grace

    async def _listen(self) -> None:
        """Routes replies on the response channel to the waiting callers, by ``rid``;
        re-subscribes with backoff whenever the subscription breaks."""
        backoff = _Backoff(0.02, 1.0)
        try:
            while True:
                try:
                    msg = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                    if msg is None:
                        await self._pubsub.ping()  # notices a silently dead connection
                        continue
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    self._subscribed.clear()
                    self._last_failure = time.monotonic()
                    log.warning("reply subscription to %s lost (%s); re-subscribing", self._shown_url, e)
                    await self._resubscribe(backoff)
                    continue
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
            log.warning("reply listener failed: %s", e)
        finally:
            pending, self._pending = self._pending, {}
            for fut in pending.values():
                if not fut.done():
                    fut.set_exception(ListenerGone("the reply listener stopped; create a new client"))

    async def _resubscribe(self, backoff: _Backoff) -> None:
        """A fresh subscription (through Sentinel, to the current master), then the requests
        whose replies may have been lost: each sent once more if its deadline allows, else
        answered with the timeout error now."""
        while True:
            await _aclose(self._pubsub)
            self._pubsub = self._redis.pubsub()
            try:
                await self._pubsub.subscribe(self._channel)
                await _confirm_subscription(self._pubsub, 5.0)
                _no_silent_reconnect(self._pubsub)
                break
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.debug("cannot re-subscribe yet: %s", e)
                await asyncio.sleep(backoff.delay())
        backoff.reset()
        self._generation += 1
        self._subscribed.set()
        log.info("reply subscription to %s re-established", self._shown_url)
        now = time.monotonic()
        resend: list[tuple[str, list[Any]]] = []
        for rid, f in list(self._inflight.items()):
            if f.sent_under is None or f.sent_under >= self._generation:
                continue
            fut = self._pending.get(rid)
            if fut is None or fut.done():
                continue
            if not f.resent and f.deadline > now:
                f.resent, f.sent_under = True, self._generation
                resend.append((rid, f.args))
            else:
                why = "reply lost with the Redis connection and the request was already re-sent once or is past its deadline"
                self._pending.pop(rid, None)
                fut.set_result(protocol.failed_response(f.rid, f.luna_id, ErrorCode.TIMEOUT, why))
        if resend:
            log.info("re-sending %d requests whose replies may have been lost", len(resend))
        for rid, args in resend:
            try:
                await cast(Any, self._redis).execute_command(*args)
            except Exception as e:  # left pending: the caller's deadline answers it
                log.debug("re-send of %s failed: %s", rid, e)


class MatcherSession:
    """A handle on a :class:`MatcherClient` for sending matches; use as ``async with``."""

    def __init__(self, client: MatcherClient) -> None:
        self._client = client
        self._open = False

    async def __aenter__(self) -> MatcherSession:
        if self._client._closed:
            raise ListenerGone("the client is closed")
        self._open = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._open = False

    async def match(
        self,
        descriptor: RawDescriptor,
        label: str,
        limit: int = 1,
        lunaRequestId: str | None = None,
        timeout: float = 10.0,
        threshold: float | None = None,
    ) -> MatchResponseDict:
        """Matches one descriptor against the index of ``label``.

        Returns the response dict ``{"rid", "luna_request_id", "status_code", "result",
        "error"}``: ``status_code`` 201 and ``result`` = ``[[id, similarity], ...]`` (at most
        ``limit``, most similar first) on success. Protocol failures come back as a response
        with ``result`` = ``None`` and ``error`` = ``{"error_code", "desc", "detail", "link"}``,
        never as an exception: 26301 (400) for an empty label, a limit outside 1..=1000 or a
        threshold outside [0, 1] (nothing is sent), 26304 (404)
        when no matcher serves the label (nothing is sent), 26309 (504) when no reply arrives
        within ``timeout`` seconds, and whatever the matcher answers otherwise.

        :param descriptor: the descriptor bytes and version.
        :param label: the matching list (stream) to search.
        :param limit: how many candidates to return, 1..=1000.
        :param lunaRequestId: passed through to the reply; generated as
            ``"<unix seconds>,<uuid4>"`` when ``None``.
        :param timeout: seconds to wait for the reply; also sets the request's deadline.
        :param threshold: only candidates at least this similar (0..=1) are returned, so the
            result may hold fewer than ``limit``; ``None`` = no minimum.
        :raises ListenerGone: the reply subscription stopped or the client was closed.
        :raises redis.exceptions.RedisError: Redis itself failed.
        """
        if not self._open:
            raise MatcherClientError("use the session as `async with client.session() as conn`")
        return await self._client.match(
            descriptor=descriptor,
            label=label,
            limit=limit,
            lunaRequestId=lunaRequestId,
            timeout=timeout,
            threshold=threshold,
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


def _no_silent_reconnect(pubsub: Any) -> None:
    """redis-py re-subscribes a broken pub/sub connection by itself; the listener must see the
    break instead, to re-send requests whose replies went missing meanwhile."""
    if pubsub.connection is not None:
        pubsub.connection.retry = Retry(NoBackoff(), 0)


async def _sleep_before(deadline: float, d: float) -> bool:
    """Sleeps ``d`` unless that would pass the deadline; False when there is no time left."""
    if time.monotonic() + d >= deadline:
        return False
    await asyncio.sleep(d)
    return True


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
