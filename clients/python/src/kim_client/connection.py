"""How the client reaches Redis, with the same settings as the Rust side (crate ``kim-redis``).

URLs: ``redis://``, ``rediss://`` (TLS) and ``redis+sentinel://host:port,host:port/master/db``
(``rediss+sentinel://`` for TLS everywhere). Credentials and TLS files come from arguments or
the environment: ``KIM_REDIS_USERNAME``, ``KIM_REDIS_PASSWORD`` or ``KIM_REDIS_PASSWORD_FILE``
(a mounted Secret), ``KIM_REDIS_CA``, ``KIM_REDIS_CERT``, ``KIM_REDIS_KEY``; Sentinel's own
password in ``KIM_REDIS_SENTINEL_PASSWORD`` (or ``_FILE``). URLs are redacted in every message.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff

__all__ = ["redact", "RedisSettings"]


def redact(url: str) -> str:
    """``scheme://user:secret@host`` → ``scheme://user:***@host``; everything before the last
    ``@`` counts as userinfo, so an unescaped ``@`` or ``/`` in a password never leaks."""
    at = url.rfind("@")
    if at < 0:
        return url
    i = url.find("://")
    scheme, info = (url[: i + 3], url[i + 3 : at]) if 0 <= i < at else ("", url[:at])
    shown = f"{info.split(':', 1)[0]}:***" if ":" in info else "***"
    return f"{scheme}{shown}{url[at:]}"


def _secret(env: Mapping[str, str], name: str) -> str | None:
    direct, path = env.get(name) or None, env.get(f"{name}_FILE") or None
    if direct is not None and path is not None:
        raise ValueError(f"set only one of {name} and {name}_FILE")
    if path is not None:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        return text[:-1].rstrip("\r") if text.endswith("\n") else text
    return direct


@dataclass
class RedisSettings:
    """A parsed URL plus credentials and TLS files."""

    url: str
    tls: bool
    sentinels: list[tuple[str, int]] = field(default_factory=list)
    master: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None
    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        ca: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> RedisSettings:
        env = os.environ if env is None else env
        shown = redact(url)
        scheme, sep, rest = url.partition("://")
        if not sep or scheme not in ("redis", "rediss", "redis+sentinel", "rediss+sentinel"):
            raise ValueError(
                f"invalid Redis URL {shown}: use redis://, rediss://, redis+sentinel:// or rediss+sentinel://"
            )
        s = cls(url=url, tls=scheme.startswith("rediss"))
        s.username = username or _secret(env, "KIM_REDIS_USERNAME")
        s.password = password or _secret(env, "KIM_REDIS_PASSWORD")
        s.sentinel_password = _secret(env, "KIM_REDIS_SENTINEL_PASSWORD")
        s.ca, s.cert, s.key = (
            ca or env.get("KIM_REDIS_CA") or None,
            cert or env.get("KIM_REDIS_CERT") or None,
            key or env.get("KIM_REDIS_KEY") or None,
        )
        if (s.ca or s.cert or s.key) and not s.tls:
            raise ValueError(f"TLS files (KIM_REDIS_CA/_CERT/_KEY) need a rediss:// URL, got {shown}")
        if bool(s.cert) != bool(s.key):
            raise ValueError("a client certificate and its key go together (KIM_REDIS_CERT, KIM_REDIS_KEY)")
        if scheme.endswith("+sentinel"):
            at = rest.rfind("@")
            if at >= 0:
                user, _, pw = rest[:at].rpartition(":") if ":" in rest[:at] else ("", "", rest[:at])
                s.username = s.username or unquote(user) or None
                s.password = s.password or unquote(pw)
                rest = rest[at + 1 :]
            hosts, _, path = rest.partition("/")
            parts = [p for p in path.split("/")]
            if not parts or not parts[0] or len(parts) > 2:
                raise ValueError(f"invalid Redis URL {shown}: expected host:port,.../<master name>[/db]")
            s.master = parts[0]
            try:
                s.db = int(parts[1]) if len(parts) == 2 and parts[1] else 0
                for h in hosts.split(","):
                    host, _, port = h.rpartition(":") if ":" in h else (h, "", "26379")
                    if not host:
                        raise ValueError(f"empty host in {hosts!r}")
                    s.sentinels.append((host.strip("[]"), int(port)))
            except ValueError as e:
                raise ValueError(f"invalid Redis URL {shown}: {e}") from None
        return s

    def _conn_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {
            # One quick reconnect for a pooled connection that died with the server; longer
            # outages are ridden out by the client's own backoff, bounded by each deadline.
            "retry": Retry(ExponentialBackoff(cap=0.2, base=0.02), 1),
            "socket_connect_timeout": 5,
        }
        if self.username:
            kw["username"] = self.username
        if self.password is not None:
            kw["password"] = self.password
        if self.tls:
            kw.update(ssl=True, ssl_ca_certs=self.ca, ssl_certfile=self.cert, ssl_keyfile=self.key)
        return kw

    def client(self, max_connections: int) -> aioredis.Redis:
        """A client whose pool reconnects (through Sentinel, to the current master)."""
        kw = self._conn_kwargs()
        if self.sentinels:
            sentinel_kw: dict[str, Any] = {"socket_connect_timeout": 2, "socket_timeout": 2}
            if self.sentinel_password is not None:
                sentinel_kw["password"] = self.sentinel_password
            if self.tls:
                sentinel_kw.update(ssl=True, ssl_ca_certs=self.ca, ssl_certfile=self.cert, ssl_keyfile=self.key)
            sentinel = Sentinel(self.sentinels, sentinel_kwargs=sentinel_kw, **kw)
            return sentinel.master_for(self.master, db=self.db, max_connections=max_connections)
        kw.pop("ssl", None)
        pool = aioredis.BlockingConnectionPool.from_url(self.url, max_connections=max_connections, **kw)
        return aioredis.Redis(connection_pool=pool)
