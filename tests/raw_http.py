"""HTTP/1.1 over a plain socket, for the server tests that send what no HTTP client would:
malformed or truncated requests, slow headers, bodies that never end. Reads exactly one
response (Content-Length, chunked, or up to the close) and says whether the server then
closed the connection."""

import json
import socket
from dataclasses import dataclass


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes
    closed: bool | None = None  # the server closed the connection after it (None: not checked)

    def json(self):
        return json.loads(self.body)


def request_bytes(
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    content_length: bool = True,
    close: bool = True,
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    if body or method == "POST":
        lines.append("Content-Type: application/json")
    if content_length:
        lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def post_bytes(path: str, obj, **kw) -> bytes:
    body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return request_bytes("POST", path, body, **kw)


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def send(port: int, data: bytes, timeout: float = 10.0, check_closed: bool = False) -> RawResponse:
    """Send `data` on a new connection and read one response. A server that answers early and
    closes (413) may make the send fail: the response is read all the same."""
    with connect(port, timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return read_response(sock, check_closed=check_closed)


class Reader:
    """Incremental reads on one socket: lines, exact byte counts, chunked bodies."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""
        self.eof = False

    def _fill(self) -> bool:
        if self.eof:
            return False
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def line(self) -> bytes | None:
        while b"\r\n" not in self.buf:
            if not self._fill():
                return None
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def exactly(self, n: int) -> bytes:
        while len(self.buf) < n and self._fill():
            pass
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def rest(self) -> bytes:
        while self._fill():
            pass
        out, self.buf = self.buf, b""
        return out

    def head(self) -> tuple[int, dict[str, str]]:
        status_line = self.line()
        if not status_line:
            raise ConnectionError("the server closed the connection without a response")
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while True:
            line = self.line()
            if not line:
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers

    def chunks(self):
        """The chunks of a chunked body as they arrive; stops at the last chunk or the close."""
        while True:
            size_line = self.line()
            if not size_line:
                return
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                self.line()
                return
            data = self.exactly(size)
            self.line()
            yield data


def read_response(sock: socket.socket, check_closed: bool = False) -> RawResponse:
    reader = Reader(sock)
    status, headers = reader.head()
    if "content-length" in headers:
        body = reader.exactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        body = b"".join(reader.chunks())
    else:
        body = reader.rest()
    closed = None
    if check_closed:
        closed = not reader.buf and not reader._fill()
    return RawResponse(status, headers, body, closed)


def assert_openai_error(response: RawResponse, status: int | None = None, code: str | None = None) -> dict:
    """The response is a 4xx (or `status`) with OpenAI's error body; returns its "error"."""
    if status is None:
        assert 400 <= response.status < 500, (response.status, response.body[:300])
    else:
        assert response.status == status, (response.status, response.body[:300])
    assert response.headers.get("content-type", "").startswith("application/json"), response.headers
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == ("invalid_request_error" if response.status < 500 else "server_error")
    if code is not None:
        assert error["code"] == code, error
    return error
