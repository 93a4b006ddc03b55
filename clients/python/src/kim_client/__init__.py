"""kim_client: asyncio client for kim matchers over Redis streams (LUNA LIM-compatible shape).

client = await MatcherClient.create("redis://127.0.0.1:6379")
async with client.session() as conn:
    resp = await conn.match(descriptor=RawDescriptor(descriptor=raw, version=59),
                            label="faces", limit=1, lunaRequestId=None, timeout=10)
labels = await client.readMatchingLabels()
await client.close()
"""

from .client import ListenerGone, MatcherClient, MatcherClientError, MatcherSession, RawDescriptor
from .protocol import ERROR_DOC, GROUP, MAX_LIMIT, STATUS_OK, ErrorCode, MatchErrorDict, MatchResponseDict

__version__ = "0.1.0"

__all__ = [
    "MatcherClient",
    "MatcherSession",
    "RawDescriptor",
    "MatcherClientError",
    "ListenerGone",
    "ErrorCode",
    "MatchErrorDict",
    "MatchResponseDict",
    "ERROR_DOC",
    "GROUP",
    "MAX_LIMIT",
    "STATUS_OK",
]
