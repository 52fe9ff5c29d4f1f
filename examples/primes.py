"""CPU-heavy numbers: count the primes below a limit, block by block, on every core.

    madhatter run examples/primes.py                            # primes below 10,000,000
    madhatter run examples/primes.py --param limit=50000000

Each block is sieved in pure Python (``@parallel.map``: one block in, one count out), so the
work scales with cores on the ``processes`` engine; the final step adds the counts up.
"""

from __future__ import annotations

import math

from madhatter import depends, parallel, postprocess, preprocess


@preprocess
def blocks(limit: int = 10_000_000, block: int = 250_000) -> list[tuple[int, int]]:
    """Split ``[0, limit)`` into half-open blocks of ``block`` numbers."""
    return [(low, min(low + block, limit)) for low in range(0, limit, block)]


def small_primes(limit: int) -> list[int]:
    """The primes up to ``limit`` (inclusive), by a plain sieve."""
    sieve = bytearray([1]) * (limit + 1)
    sieve[: min(2, limit + 1)] = b"\x00" * min(2, limit + 1)
    for n in range(2, math.isqrt(limit) + 1):
        if sieve[n]:
            sieve[n * n :: n] = bytearray(len(range(n * n, limit + 1, n)))
    return [n for n in range(limit + 1) if sieve[n]]


@depends(blocks)
@parallel.map
def count_primes(bounds: tuple[int, int]) -> int:
    """Count the primes in ``[low, high)`` with a segmented sieve."""
    low, high = bounds
    segment = bytearray([1]) * (high - low)
    for prime in small_primes(math.isqrt(high - 1) if high > 1 else 0):
        start = max(prime * prime, (low + prime - 1) // prime * prime)
        for multiple in range(start, high, prime):
            segment[multiple - low] = 0
    for n in range(low, min(2, high)):
        segment[n - low] = 0
    return sum(segment)


@depends(count_primes)
@postprocess
def total(counts: list[int]) -> int:
    """The number of primes below the limit."""
    return sum(counts)
