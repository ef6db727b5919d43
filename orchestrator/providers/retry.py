"""When a failed vendor call may be sent again, and how long to wait first -- the same for every vendor.

* :attr:`Retry.SAFE` -- repeating has the effect of one call (reads, stops, event reports, idempotent
  commands): after any transport error, 429 or 5xx;
* :attr:`Retry.UNSENT` -- only when the vendor certainly did not act (a connect error, a 429): what would
  be done twice (a reply said twice, a second paid session) otherwise;
* :attr:`Retry.NEVER`.

Backoff is exponential with full jitter, a 429's ``Retry-After`` honoured (capped).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum

from orchestrator.providers.errors import (
    ProviderConnectError,
    ProviderError,
    ProviderRateLimited,
    ProviderServerError,
    ProviderTransportError,
)


class Retry(Enum):
    """Which failures of a call may be retried."""

    SAFE = "safe"  # repeating has the effect of one call: any transport error, 429, 5xx
    UNSENT = "unsent"  # only failures where the vendor certainly did not act: connect error, 429
    NEVER = "never"


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 3
    backoff_base_s: float = 0.2
    backoff_cap_s: float = 5.0
    max_retry_after_s: float = 60.0

    def delay_s(self, attempt: int, error: ProviderError) -> float:
        """Full-jitter exponential backoff; a 429's Retry-After (capped) when the vendor gave one."""
        if isinstance(error, ProviderRateLimited) and error.retry_after_s is not None:
            return min(error.retry_after_s, self.max_retry_after_s)
        return random.uniform(0, min(self.backoff_cap_s, self.backoff_base_s * 2**attempt))  # noqa: S311


def is_retryable(error: ProviderError, mode: Retry) -> bool:
    """Whether ``error`` may be retried under ``mode`` (pure; table-tested)."""
    if mode is Retry.NEVER:
        return False
    if isinstance(error, ProviderConnectError | ProviderRateLimited):
        return True
    if mode is Retry.UNSENT:
        return False
    return isinstance(error, ProviderTransportError | ProviderServerError)
