"""Liveness and readiness probes.

``/healthz`` answers 200 while the process serves HTTP at all. ``/readyz`` runs every registered readiness
check (Redis now; later features add theirs) and answers 200 only if all pass, 503 otherwise -- also once
shutdown has begun, so a load balancer stops sending new work before the listener closes.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from orchestrator import __version__
from orchestrator.appkeys import LIFECYCLE, READINESS_CHECKS
from orchestrator.web.openapi import describe

routes = web.RouteTableDef()


@routes.get("/healthz")
@describe("Liveness: 200 while the process serves HTTP", auth="none", tag="meta")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "version": __version__})


@routes.get("/readyz")
@describe(
    "Readiness: 200 when every check passes, 503 otherwise or while draining",
    auth="none",
    tag="meta",
    errors=(503,),
)
async def readyz(request: web.Request) -> web.Response:
    checks = request.app[READINESS_CHECKS]
    results = await asyncio.gather(*(check() for check in checks.values()))
    report = {
        name: {"ok": ok, **({"detail": detail} if detail else {})}
        for name, (ok, detail) in zip(checks, results, strict=True)
    }
    draining = request.app[LIFECYCLE].draining
    ready = all(ok for ok, _ in results) and not draining
    body = {"ready": ready, "draining": draining, "checks": report}
    return web.json_response(body, status=200 if ready else 503)
