"""A request's work runs only while its client waits for it: a disconnect or the timeout cancels it.

Cancelling the work cancels its `AsyncEngine.submit` calls, which drops their queued slices at once
(a slice already in a pass finishes that pass, one micro-batch, and its result is discarded).
A disconnect is seen on the ASGI `receive` channel: once the body is read, the server's next message
on it is `http.disconnect`, sent when the client closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Iterable
from typing import TypeVar

from starlette.requests import Request
from starlette.types import Receive

from qrerank.serving.async_engine import EngineClosed
from qrerank.serving.errors import ApiError, ClientDisconnected

T = TypeVar("T")


async def while_connected(request: Request, work: Awaitable[T], timeout_s: float) -> T:
    """The result of `work`, or ApiError 504 after `timeout_s`, or ClientDisconnected; in both of the
    latter cases `work` is cancelled first. Call it once the request's body has been read."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnect(request.receive))
    try:
        await asyncio.wait((task, gone), timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:  # also when this handler itself is cancelled (server shutdown past its grace period)
        gone.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if not task.cancelled():
        try:
            return task.result()
        except EngineClosed:
            raise ApiError(503, "the server is shutting down; retry on another replica") from None
    if gone.done() and not gone.cancelled():
        raise ClientDisconnected("waiting")
    raise ApiError(504, f"the request was not answered within {timeout_s} s")


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def all_of(works: Iterable[Awaitable[T]]) -> list[T]:
    """`asyncio.gather`, except that the first failure cancels the others: no engine work for a request
    that has already failed."""
    tasks = [asyncio.ensure_future(work) for work in works]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()  # a no-op for those done
