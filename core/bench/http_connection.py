"""HTTP/1.1 keep-alive connections on asyncio streams for the bench client: a capped pool,
chunked and sized bodies, nothing else (no proxies, redirects or HTTP/2). Split from
http_client.py, which says why the bench does not use httpx."""

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class ConnectFailed(OSError):
    """No connection: refused, unreachable, name not resolved, TLS handshake failed."""


class Connection:
    """One HTTP/1.1 connection, kept alive between requests when the server allows."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.keep_alive = False  # the last response's head allowed reuse
        self.reusable = False  # ...and its body was read to the end

    async def request(self, data: bytes) -> tuple[int, dict[str, str]]:
        """Send a whole request; return the response's status and headers (names lowercased)."""
        self.reusable = False
        self.writer.write(data)
        await self.writer.drain()
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        version, status = head[0].split(" ", 2)[:2]
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        self.keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        return int(status), headers

    async def body(self, headers: dict[str, str]) -> AsyncIterator[bytes]:
        """The response body as it arrives: one item per HTTP chunk (one SSE event, usually)."""
        reader = self.reader
        if "chunked" in headers.get("transfer-encoding", "").lower():
            while size := int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16):
                yield (await reader.readexactly(size + 2))[:-2]
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                pass
        elif "content-length" in headers:
            left = int(headers["content-length"])
            while left > 0:
                chunk = await reader.read(min(left, 1 << 16))
                if not chunk:
                    raise asyncio.IncompleteReadError(b"", left)
                left -= len(chunk)
                yield chunk
        else:  # no length: the body runs to the end of the connection
            self.keep_alive = False
            while chunk := await reader.read(1 << 16):
                yield chunk
        self.reusable = self.keep_alive

    @property
    def is_stale(self) -> bool:
        return self.reader.at_eof() or self.writer.is_closing()

    def close(self) -> None:
        self.writer.close()


class ConnectionPool:
    """Kept-alive connections to one origin, at most `max_connections` in use (None: no cap);
    handing one out is O(1)."""

    def __init__(self, scheme: str, host: str, port: int | None, max_connections: int | None):
        self.host = host
        self.port = port or (443 if scheme == "https" else 80)
        self.ssl = ssl.create_default_context() if scheme == "https" else None
        self.slots = asyncio.Semaphore(max_connections) if max_connections else None
        self.idle: list[Connection] = []

    async def open(self) -> Connection:
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port, ssl=self.ssl, limit=1 << 20)
        except OSError as e:  # refused, unreachable, DNS (gaierror), TLS (SSLError); not our timeout
            if isinstance(e, TimeoutError):
                raise
            raise ConnectFailed(f"{type(e).__name__}: {e}") from None
        return Connection(reader, writer)

    @asynccontextmanager
    async def request(self, data: bytes):
        """Send `data` on a pooled connection; yields (connection, status, headers). The
        connection goes back to the pool only if its response was read to the end."""
        if self.slots is not None:
            await self.slots.acquire()
        conn = None
        try:
            while True:
                while self.idle and self.idle[-1].is_stale:  # the server closed it while idle
                    self.idle.pop().close()
                reused = bool(self.idle)
                conn = self.idle.pop() if reused else await self.open()
                try:
                    status, headers = await conn.request(data)
                    break
                except (OSError, EOFError) as e:
                    # A kept-alive connection the server closed as we sent: retry on a new one,
                    # but only if not a byte of the response came (never a half-answered request).
                    conn.close()
                    if not reused or getattr(e, "partial", b""):
                        raise
            yield conn, status, headers
        finally:
            if conn is not None:
                if conn.reusable:
                    self.idle.append(conn)
                else:
                    conn.close()
            if self.slots is not None:
                self.slots.release()

    def close(self) -> None:
        while self.idle:
            self.idle.pop().close()


async def read_all(body: AsyncIterator[bytes], limit: int = 1 << 20) -> bytes:
    """A whole (error or JSON) body, kept to `limit` bytes."""
    out = b""
    async for chunk in body:
        if len(out) < limit:
            out += chunk
    return out[:limit]
