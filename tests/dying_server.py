"""An OpenAI-style streaming server that dies: it answers /v1/models and streams
/v1/completions (stdlib asyncio, no model), and once it has served LIVES completions the
next request makes the process exit on the spot, unanswered, as a crashed server would.
Later requests find nothing listening.

Run as a script: `python tests/dying_server.py LIVES`; it prints its port on the first line
of stdout once it listens. Every response closes its connection (no keep-alive), so a
request after the death is refused at connect, deterministically.
"""

import asyncio
import json
import os
import sys

TOKENS_PER_REQUEST = 4
GAP_S = 0.002  # between chunks: small, but the client sees a real stream


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: dict) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    if state["served"] >= state["lives"]:
        os._exit(0)  # the crash, on the next request after the last one served: no answer, no shutdown
    lines = head.decode("latin-1").split("\r\n")
    method, path = lines[0].split(" ")[:2]
    headers = {
        k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
    }
    body = await reader.readexactly(int(headers.get("content-length", 0)))
    if path == "/v1/models":
        data = json.dumps({"object": "list", "data": [{"id": "dying", "object": "model"}]}).encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(data), data)
        )
    else:
        request = json.loads(body)
        n = min(TOKENS_PER_REQUEST, request.get("max_tokens") or TOKENS_PER_REQUEST)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
        for _ in range(n):
            await asyncio.sleep(GAP_S)
            chunk = {
                "object": "text_completion",
                "choices": [{"index": 0, "text": " tok", "finish_reason": None}],
            }
            writer.write(b"data: %s\n\n" % json.dumps(chunk).encode())
            await writer.drain()
        usage = {"prompt_tokens": 8, "completion_tokens": n, "total_tokens": 8 + n}
        tail = {"object": "text_completion", "choices": [], "usage": usage}
        writer.write(b"data: %s\n\ndata: [DONE]\n\n" % json.dumps(tail).encode())
        state["served"] += 1
    await writer.drain()
    writer.close()


async def main(lives: int) -> None:
    state = {"served": 0, "lives": lives}
    server = await asyncio.start_server(lambda r, w: handle(r, w, state), "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
