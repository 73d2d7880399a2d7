"""A token-bucket rate limiter shared by every download worker, which a server's Retry-After can pause."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable


class RateLimiter:
    """A token bucket shared by all workers; ``hold`` pauses everyone (a server's Retry-After)."""

    def __init__(self, rate: float, burst: int = 1, *, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.capacity = max(1, burst)
        self.tokens = float(self.capacity)
        self.clock = clock
        self.updated = clock()
        self.hold_until = 0.0
        self.lock = threading.Lock()

    def hold(self, seconds: float) -> None:
        with self.lock:
            self.hold_until = max(self.hold_until, self.clock() + seconds)

    def wait_time(self) -> float:
        """Take a token and return 0, or return how long to wait before asking again."""
        with self.lock:
            now = self.clock()
            if now < self.hold_until:
                return self.hold_until - now
            if self.rate <= 0:
                return 0.0
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            if self.tokens >= 1:
                self.tokens -= 1
                return 0.0
            return (1 - self.tokens) / self.rate

    def acquire(self, sleep: Callable[[float], bool]) -> bool:
        """Block until a token is taken; ``sleep(s)`` returns True to give up (stop requested)."""
        while (wait := self.wait_time()) > 0:
            if sleep(wait):
                return False
        return True
