"""The local status server (aiohttp, loopback by default): `/healthz`, `/status` (JSON) and
`/metrics` (Prometheus text). Read-only; it never blocks the collection loop."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from hiveagent.config import StatusServerSettings

log = logging.getLogger(__name__)


class StatusServer:
    def __init__(
        self,
        settings: StatusServerSettings,
        *,
        health: Callable[[], tuple[bool, str]],
        status: Callable[[], dict[str, Any]],
        metrics: Callable[[], str],
    ) -> None:
        self.settings = settings
        self.health = health
        self.status = status
        self.metrics = metrics
        self.runner: web.AppRunner | None = None
        self.port: int | None = None  # the bound port (useful with port 0)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/status", self._status)
        app.router.add_get("/metrics", self._metrics)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.settings.address, self.settings.port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.settings.port
        log.info("status server on http://%s:%s/", self.settings.address, self.port)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def _healthz(self, _request: web.Request) -> web.Response:
        ok, why = self.health()
        return web.json_response(
            {"status": "ok" if ok else "unhealthy", "detail": why}, status=200 if ok else 503
        )

    async def _status(self, _request: web.Request) -> web.Response:
        return web.json_response(self.status(), dumps=_dumps)

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=self.metrics().encode(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )


def _dumps(obj: Any) -> str:
    import json

    return json.dumps(obj, indent=1, sort_keys=True, default=str)
