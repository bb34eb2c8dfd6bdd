"""Micro-batching: concurrent requests to one model answered in one batch."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from dataclasses import dataclass, field
from typing import Any

from tunewise.serving.served_model import RequestDeadlineExceeded, ServedModel, deadline_scope


@dataclass
class _Pending:
    item: tuple[str, str]
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)
    deadline: float | None = None  # time.monotonic() by which the request must be answered


class MicroBatcher:
    """Per arm: requests that arrive while a batch waits (``max_wait_ms``) or runs go into the next
    batch; one ``predict`` per batch in the model's thread, so the event loop never blocks."""

    def __init__(
        self,
        model: ServedModel,
        executor: concurrent.futures.Executor,
        max_batch: int,
        max_wait_ms: float,
        on_batch: Any = None,
        batch_threads: int | None = None,
        batch_threads_min_rows: int = 8,
    ) -> None:
        self.model = model
        self.executor = executor
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.on_batch = on_batch
        self.batch_threads = batch_threads
        self.batch_threads_min_rows = batch_threads_min_rows
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass

    async def submit(self, text: str, context: str, deadline: float | None = None) -> tuple[dict[str, Any], int]:
        """The answer and the size of the batch it came in. ``deadline`` (time.monotonic()): a request
        still queued then is dropped, and a model call runs only until the last deadline of its batch."""
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(_Pending((text, context), future, deadline=deadline))
        return await future

    def _predict(self, items: list[tuple[str, str]], deadline: float | None = None) -> list[dict[str, Any]]:
        """One model call; a large batch gets ``batch_threads`` (set per call in the model's thread):
        on CPU one request's matrices are too small to share across cores, a full batch's are not."""
        with deadline_scope(deadline):
            if deadline is not None and time.monotonic() > deadline:
                raise RequestDeadlineExceeded("the request timed out before the model started")
            if not self.batch_threads or len(items) < self.batch_threads_min_rows:
                return self.model.predict(items)
            from tunewise.candidates.finetuned import torch_threads  # on use: loads scipy, sklearn

            with torch_threads(self.batch_threads):
                return self.model.predict(items)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except TimeoutError:
                    break
            # requests that timed out while queued (their handler answered 504) are not computed
            batch = [p for p in batch if not p.future.done()]
            if not batch:
                continue
            deadlines = [p.deadline for p in batch]
            # the batch runs while any of its requests still waits; None: no deadline
            deadline = None if any(d is None for d in deadlines) else max(deadlines)
            try:
                results = await loop.run_in_executor(self.executor, self._predict, [p.item for p in batch], deadline)
            except Exception as exc:  # noqa: BLE001
                if len(batch) == 1 or isinstance(exc, RequestDeadlineExceeded):
                    for p in batch:
                        p.future.done() or p.future.set_exception(exc)
                    continue
                # one by one, so a single input the model chokes on fails alone, not its batch-mates
                for p in batch:
                    if p.future.done():
                        continue
                    try:
                        (result,) = await loop.run_in_executor(self.executor, self._predict, [p.item], p.deadline)
                    except Exception as one:  # noqa: BLE001
                        p.future.done() or p.future.set_exception(one)
                    else:
                        p.future.done() or p.future.set_result((result, 1))
                continue
            if self.on_batch is not None:
                self.on_batch(len(batch))
            for p, result in zip(batch, results):
                if not p.future.done():
                    p.future.set_result((result, len(batch)))
