"""Which failures are worth another attempt, and how long to wait before it.

botocore already retries each call a few times (standard mode). What reaches
the runner is a step that still failed; if the cause is transient, the
runner tries the whole step again (steps are idempotent), with exponential
backoff and full jitter, up to the workflow's ``retry.max_attempts``. The
attempts are counted in the database, so a restart does not reset them.
"""

from __future__ import annotations

import random

from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

from engine.config import RetryConfig

TRANSIENT_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalFailure",
        "InternalError",
        "InternalServerError",
        "RequestTimeout",
        "RequestTimeoutException",
        "ConcurrentModification",
        "ReportInProgress",
    }
)
# EC2 refuses a freshly created instance profile for a minute or two.
EC2_PROFILE_NOT_VISIBLE = "Invalid IAM Instance Profile"


def is_transient(err: BaseException) -> bool:
    """Tell whether another attempt at the same step may well succeed."""
    if isinstance(err, ConnectionError | HTTPClientError):
        return True
    if not isinstance(err, ClientError):
        return False
    error = err.response.get("Error", {})
    code = str(error.get("Code", ""))
    if code in TRANSIENT_CODES:
        return True
    message = str(error.get("Message", ""))
    return code == "InvalidParameterValue" and EC2_PROFILE_NOT_VISIBLE in message


def backoff_seconds(
    failed_attempts: int, settings: RetryConfig, rng: random.Random
) -> float:
    """Return a full-jitter exponential delay before the next attempt."""
    ceiling = settings.base_delay_seconds * (2 ** max(failed_attempts - 1, 0))
    return rng.uniform(0, min(settings.max_delay_seconds, ceiling))
