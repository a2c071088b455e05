"""HTTP endpoints: /metrics (cached exposition), / (landing page), /-/healthy, /-/ready and the
Prometheus-shaped /api/v1/alerts and /api/v1/rules."""

from __future__ import annotations

import asyncio
import html
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from gpumon import __version__
from gpumon.config import Listen
from gpumon.exporter import OPENMETRICS_TYPE, TEXT_TYPE, Exporter
from gpumon.notify.silences import Silences
from gpumon.notify.silences import parse_request as parse_silence
from gpumon.rules.service import RuleService
from gpumon.sampler import Sampler
from gpumon.webconfig import WebSecurity

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ListenError(Exception):
    """The listen address cannot be bound (in use, not permitted, no such address)."""


class WebServer:
    def __init__(self, sampler: Sampler, exporter: Exporter, *, demo_note: str = "",
                 rules: RuleService | None = None, silences: Silences | None = None) -> None:
        self.sampler = sampler
        self.rules = rules
        self.silences = silences
        self.exporter = exporter
        self.demo_note = demo_note
        self.security = WebSecurity()
        self._runner: web.AppRunner | None = None
        self.bound: list[tuple[str, int]] = []

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/", self.landing)
        app.router.add_get("/-/healthy", self.healthy)
        app.router.add_get("/-/ready", self.ready)
        app.router.add_get("/api/v1/alerts", self.api_alerts)
        app.router.add_get("/api/v1/rules", self.api_rules)
        app.router.add_get("/api/v1/silences", self.list_silences)
        app.router.add_post("/api/v1/silences", self.create_silence)
        app.router.add_delete("/api/v1/silences/{id}", self.expire_silence)
        return app

    async def start(self, listen: Listen, security: WebSecurity) -> None:
        """Bind and serve; raises ListenError with a sentence the user can act on.

        The security settings take effect only once bound: after a ListenError, `self.security` is
        still the previous one, for a caller that falls back to the previous address.
        """
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, listen.host or None, listen.port, ssl_context=security.ssl_context,
                           reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ListenError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
        self.security = security
        self._runner = runner
        self.bound = [tuple(a[:2]) for a in runner.addresses]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        security, header = self.security, request.headers.get("Authorization")
        # bcrypt takes tens of milliseconds: off the event loop, which also runs the poll loops.
        if not (security.is_cached(header)
                or await asyncio.get_running_loop().run_in_executor(None, security.check_authorization, header)):
            response: web.StreamResponse = web.Response(
                status=401, text="Unauthorized\n", headers={"WWW-Authenticate": 'Basic realm="gpumon"'})
        else:
            response = await handler(request)
        for name, value in security.headers.items():
            response.headers[name] = value
        return response

    async def metrics(self, request: web.Request) -> web.Response:
        openmetrics = "application/openmetrics-text" in request.headers.get("Accept", "")
        gzipped = "gzip" in request.headers.get("Accept-Encoding", "")
        body = self.exporter.body(openmetrics, gzipped)
        headers = {"Content-Type": OPENMETRICS_TYPE if openmetrics else TEXT_TYPE,
                   "Vary": "Accept, Accept-Encoding"}
        if gzipped and body:  # before the first render there is nothing, not even a gzip header
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, headers=headers)

    async def api_alerts(self, request: web.Request) -> web.Response:
        """Pending and firing alerts in the shape of Prometheus's /api/v1/alerts."""
        if self.rules is None:
            return web.json_response({"status": "success", "data": {"alerts": []}})
        return web.json_response(self.rules.api_alerts())

    async def api_rules(self, request: web.Request) -> web.Response:
        """Rule groups, health and alerts in the shape of Prometheus's /api/v1/rules."""
        if self.rules is None:
            return web.json_response({"status": "success", "data": {"groups": []}})
        return web.json_response(self.rules.api_rules())

    async def list_silences(self, request: web.Request) -> web.Response:
        now = time.time()
        found = self.silences.all() if self.silences is not None else []
        return web.json_response({"status": "success", "data": [s.to_json(now) for s in found]})

    async def create_silence(self, request: web.Request) -> web.Response:
        """Silence alerts matching all matchers for a time: {"matchers", "endsAt" | "duration", "comment"}."""
        if self.silences is None:
            return _api_error(503, "silences are not available")
        try:
            body = await request.json()
            silence = self.silences.add(*parse_silence(body, time.time()))
        except (ValueError, UnicodeDecodeError) as exc:  # json.JSONDecodeError is a ValueError
            return _api_error(400, str(exc))
        return web.json_response({"status": "success", "data": silence.to_json(time.time())})

    async def expire_silence(self, request: web.Request) -> web.Response:
        if self.silences is None or not self.silences.expire(request.match_info["id"]):
            return _api_error(404, "no such silence")
        return web.json_response({"status": "success"})

    async def healthy(self, request: web.Request) -> web.Response:
        return web.Response(text="gpumon is healthy.\n")

    async def ready(self, request: web.Request) -> web.Response:
        if self.sampler.ready.is_set():
            return web.Response(text="gpumon is ready.\n")
        return web.Response(status=503, text="gpumon is not ready: no complete poll yet.\n")

    async def landing(self, request: web.Request) -> web.Response:
        rows = "".join(
            f"<tr><td>{d.index}</td><td>{html.escape(d.name)}</td><td><code>{html.escape(d.uuid)}</code></td>"
            f"<td>{html.escape(d.pci_bus_id)}</td><td>{'GPM' if d.gpm_supported else 'util.gpu only'}</td></tr>"
            for d in self.sampler.devices)
        banner = (f'<p class="demo"><strong>DEMO DATA</strong>: {html.escape(self.demo_note)}</p>'
                  if self.demo_note else "")
        page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>gpumon</title>
<style>body{{font-family:sans-serif;margin:2em}} td,th{{padding:.2em .8em;text-align:left}}
.demo{{background:#fde68a;border:2px solid #b45309;padding:.6em}}</style></head>
<body><h1>gpumon {html.escape(__version__)}</h1>
{banner}
<p>Backend: <strong>{html.escape(self.sampler.source.backend)}</strong>.
<a href="/metrics">Metrics</a> · <a href="/api/v1/alerts">Alerts</a> · <a href="/api/v1/rules">Rules</a> ·
<a href="/-/healthy">Health</a> · <a href="/-/ready">Readiness</a></p>
<table><tr><th>GPU</th><th>Name</th><th>UUID</th><th>PCI bus</th><th>SM activity</th></tr>{rows}</table>
</body></html>
"""
        return web.Response(text=page, content_type="text/html")


def _api_error(status: int, message: str) -> web.Response:
    return web.json_response({"status": "error", "error": message}, status=status)
