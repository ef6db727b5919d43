"""MetaStudio's documented error codes that decide what the daemon does -- and what the sandbox answers.

One table for both sides, so the client's reading of a code and the sandbox's use of it cannot drift
apart. Each code is cited from the API reference (004, §11.2 "Error Codes", lines 16216-17018; the
example bodies of §6.1/§6.2) with its documented HTTP status. The status is *not* what the client reads:
MetaStudio answers "this job does not exist or has expired" with HTTP 500, which a client going by the
status alone would retry for ever while the room it should restart stays down.
"""

from __future__ import annotations

from typing import NamedTuple

from orchestrator.providers.errors import (
    ProviderBadRequest,
    ProviderConflict,
    ProviderJobNotRunning,
    ProviderNotFound,
    ProviderStatusError,
)


class Code(NamedTuple):
    code: str
    status: int
    message: str


# --- generic (004 §3 error body; the example responses of every API) ---
UNAUTHORIZED = Code("MSS.00000001", 401, "Unauthorized")
NOT_FOUND = Code("MSS.00000002", 404, "Not Found")  # 004 l.7584: show room, 404
INVALID_PARAMETER = Code("MSS.00000003", 400, "Invalid parameter")
INTERNAL_ERROR = Code("MSS.00000004", 500, "Internal Error")
REQUEST_JSON_ERROR = Code("MSS.10000002", 400, "Request JSON error.")
PROJECT_NOT_FOUND = Code("MSS.00020004", 400, "Project ID not found.")  # 004 l.16365
PROJECT_MISMATCH = Code(  # 004 l.16385
    "MSS.00020006", 403, "The project ID in the token does not match that in the path."
)

# --- smart live (004 §11.2, MSS.2001xxxx) ---
ROOM_NOT_FOUND = Code("MSS.20010045", 400, "Room information not found.")  # l.16833
REPORT_AUTH_FAILED = Code("MSS.20010039", 401, "Report livestreaming authentication failed.")  # l.16876
REPORT_EXPIRED = Code("MSS.20010054", 401, "Livestreaming reporting event has expired.")  # l.16877
JOB_ONGOING = Code(  # l.16931
    "MSS.20010036", 500, "There are ongoing livestreaming tasks in the live room."
)
JOB_EXPIRED = Code("MSS.20010037", 500, "The livestreaming task has expired.")  # l.16932
JOB_NOT_FOUND = Code("MSS.20010046", 500, "Livestreaming task not found.")  # l.16941
JOB_GONE = Code("MSS.20010051", 500, "The livestreaming task does not exist or has expired.")  # l.16946
INVALID_COMMAND = Code("MSS.20010053", 500, "Invalid command. Check the parameter command.")  # l.16948
JOB_GONE_AGAIN = Code("MSS.20010059", 500, "The livestreaming task does not exist or has expired.")  # l.16954
JOB_NOT_RUNNING = Code(  # l.16975
    "MSS.20010099",
    500,
    "The livestreaming task is not in the running status. The task ID is {job_id} and the status is {state}.",
)
THROTTLED = Code("APIGW.0308", 429, "The throttling threshold has been reached")

#: Every documented "the job (or room) does not exist or has expired" code, whatever its status.
GONE = frozenset(c.code for c in (JOB_EXPIRED, JOB_NOT_FOUND, JOB_GONE, JOB_GONE_AGAIN, ROOM_NOT_FOUND))

#: How the client reads a code, overriding its HTTP status (see ``providers.errors.status_error``).
BY_CODE: dict[str, type[ProviderStatusError]] = {
    **dict.fromkeys(GONE, ProviderNotFound),
    JOB_NOT_RUNNING.code: ProviderJobNotRunning,
    JOB_ONGOING.code: ProviderConflict,
    INVALID_COMMAND.code: ProviderBadRequest,  # a 500 that no retry can fix
}
