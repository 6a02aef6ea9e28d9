"""The client-side API budget: a rolling five-minute request limit plus Cloudflare's 429 pauses.

One :class:`RequestBudget` serves every account that shares a token, so no configuration and no
number of scrapes can send more than ``limit`` requests in any 300-second window.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

WINDOW_SECONDS = 300.0


class RequestBudget:
    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._sent: deque[float] = deque()
        self._paused_until = 0.0

    def _expire(self, now: float) -> None:
        while self._sent and self._sent[0] <= now - WINDOW_SECONDS:
            self._sent.popleft()

    def available(self) -> int:
        """Requests the rolling window still allows (a 429 pause is :meth:`paused_for`)."""
        self._expire(self._clock())
        return self.limit - len(self._sent)

    def try_acquire(self) -> bool:
        """Take one request from the budget; False when it is spent or paused."""
        if self.paused_for() > 0 or self.available() <= 0:
            return False
        self._sent.append(self._clock())
        return True

    def pause_for(self, seconds: float) -> None:
        """Honour a 429's ``Retry-After``: no request until ``seconds`` from now."""
        self._paused_until = max(self._paused_until, self._clock() + max(seconds, 0.0))

    def paused_for(self) -> float:
        """Seconds left of a 429 pause, 0 when none."""
        return max(0.0, self._paused_until - self._clock())
