"""The harness's load driver (service/harness/load.py) against a small real HTTP server."""

from __future__ import annotations

import asyncio
import time

from service.harness.load import Endpoint, LoadPlan, drive


async def read_body(reader: asyncio.StreamReader) -> bytes | None:
    """The body of the next request on ``reader``; ``None`` once the client has gone."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    return await reader.readexactly(length)


async def refusing_server(arrivals: list[float]) -> asyncio.Server:
    """Answers the first request of each connection 503 with ``Retry-After: 1``, the rest
    200; records when each request arrived."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served = 0
        while True:
            if await read_body(reader) is None:
                break
            arrivals.append(time.perf_counter())
            if served == 0:
                status, extra = b"503 Service Unavailable", b"Retry-After: 1\r\n"
            else:
                status, extra = b"200 OK", b""
            served += 1
            writer.write(b"HTTP/1.1 " + status + b"\r\n" + extra + b"Content-Length: 2\r\n\r\n{}")
            await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def run_against_refusals(honour: bool, duration_s: float) -> tuple[list[int], list[float]]:
    arrivals: list[float] = []

    async def scenario() -> list[int]:
        server = await refusing_server(arrivals)
        port = server.sockets[0].getsockname()[1]
        plan = LoadPlan(
            duration_s=duration_s, concurrency=1, max_requests=3, honour_retry_after=honour
        )
        async with server:
            samples = await drive(Endpoint.parse(f"http://127.0.0.1:{port}/x"), [b"{}"], plan)
        return [sample.status for sample in samples]

    return asyncio.run(scenario()), arrivals


def test_a_client_that_honours_retry_after_waits_before_sending_again() -> None:
    statuses, arrivals = run_against_refusals(honour=True, duration_s=1.5)
    assert statuses[:2] == [503, 200]
    assert arrivals[1] - arrivals[0] >= 1.0


def test_within_the_wait_nothing_more_is_sent_unless_the_client_ignores_it() -> None:
    # A run shorter than the second the refusal asks for: one request, or all three.
    assert run_against_refusals(honour=True, duration_s=0.5)[0] == [503]
    assert run_against_refusals(honour=False, duration_s=0.5)[0] == [503, 200, 200]


async def recording_server(bodies: list[bytes]) -> asyncio.Server:
    """Answers every request 200 and records its body."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            if (body := await read_body(reader)) is None:
                break
            bodies.append(body)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def test_in_order_sends_the_bodies_round_and_round() -> None:
    received: list[bytes] = []
    bodies = [b'{"n": 0}', b'{"n": 1}', b'{"n": 2}']

    async def scenario() -> None:
        server = await recording_server(received)
        port = server.sockets[0].getsockname()[1]
        plan = LoadPlan(duration_s=30.0, concurrency=1, max_requests=7, in_order=True)
        async with server:
            await drive(Endpoint.parse(f"http://127.0.0.1:{port}/x"), bodies, plan)

    asyncio.run(scenario())
    assert received == [bodies[0], bodies[1], bodies[2], bodies[0], bodies[1], bodies[2], bodies[0]]
