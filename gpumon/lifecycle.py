"""The one shape every long-running part of the daemon has: started on entering, stopped on leaving,
so the daemon wires them into one `contextlib.AsyncExitStack` and stops them in reverse order."""

from __future__ import annotations

import inspect
from types import TracebackType
from typing import Any, Self


class Service:
    """An async context manager over the subclass's `start()` (sync or async) and `async stop()`."""

    def start(self) -> Any:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        started = self.start()
        if inspect.isawaitable(started):
            await started
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()
