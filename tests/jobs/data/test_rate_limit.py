"""The shared token bucket: burst, steady rate, a server's hold, and a stop request."""
import pytest

from jobs.data.rate_limit import RateLimiter


def test_rate_limiter_token_bucket():
    now = [0.0]
    limiter = RateLimiter(rate=2.0, burst=2, clock=lambda: now[0])

    def sleep(s):
        now[0] += s
        return False

    for _ in range(6):
        assert limiter.acquire(sleep)
    assert now[0] == pytest.approx(2.0)        # 2 from the bucket, then one every 0.5 s
    limiter.hold(3.0)
    assert limiter.wait_time() == pytest.approx(3.0)
    assert not limiter.acquire(lambda s: True)  # a stop request ends the wait


def test_rate_zero_is_unlimited_but_a_hold_still_pauses():
    now = [10.0]
    limiter = RateLimiter(rate=0, burst=1, clock=lambda: now[0])
    assert all(limiter.wait_time() == 0 for _ in range(100))
    limiter.hold(1.5)
    assert limiter.wait_time() == pytest.approx(1.5)
