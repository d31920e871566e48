"""A TCP proxy that delays every chunk by a fixed time in each direction: network latency for
an S3 server on this machine (benchmarks/RESULTS.md, "S3 backup overhead").

    python benchmarks/lagproxy.py LISTEN_PORT TARGET_PORT DELAY_SECONDS

Start a moto server (as ``run.py``'s s3 group does), run this with its port and, say,
0.010 (20 ms round trips), and point ``AWS_ENDPOINT_URL`` at ``http://127.0.0.1:LISTEN_PORT``.
It adds latency only: bandwidth is whatever the machine's loopback gives.
"""

from __future__ import annotations

import asyncio
import sys


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Forward what ``reader`` receives to ``writer``, each chunk ``delay`` seconds after it came."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def send() -> None:
        while True:
            due, data = await queue.get()
            await asyncio.sleep(max(0.0, due - loop.time()))
            if not data:
                writer.close()
                return
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(send())
    while True:
        data = await reader.read(1 << 16)
        await queue.put((loop.time() + delay, data))
        if not data:
            break
    await sender


async def _serve(listen: int, target: int, delay: float) -> None:
    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", target)
        await asyncio.gather(_pipe(client_r, server_w, delay), _pipe(server_r, client_w, delay), return_exceptions=True)

    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(_serve(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])))
