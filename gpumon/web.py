"""HTTP endpoints: /metrics (cached exposition), / (the console) and /static/, /-/healthy, /-/ready, the
Prometheus-shaped /api/v1/alerts and /api/v1/rules, Prometheus's query API over the store's history
(/api/v1/query, query_range, series, labels, label/<name>/values, metadata), and /api/v1/silences.

Nobody who can reach the port can hang or mute the daemon (docs/security.md): connections are
capped below the process's file limit, and when the cap is reached the oldest idle connection makes
room (a slow-headers attacker cannot lock scrapers out); a new connection must send its request
headers within `read_header_timeout`; bodies are at most 64 KiB. The silence endpoints write, so they
answer only under the `web.write_endpoints` policy, only to JSON, and never to a cross-site request.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ipaddress
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from gpumon.backend import Backend
from gpumon.config import Listen, WebConfig
from gpumon.console import assets
from gpumon.console.assets import PAGE_HEADERS
from gpumon.console.page import render as render_console
from gpumon.exporter import OPENMETRICS_TYPE, TEXT_TYPE, Exporter
from gpumon.health import Health
from gpumon.notify.silences import SilenceError, Silences, SilenceStoreError
from gpumon.notify.silences import parse_request as parse_silence
from gpumon.query_api import QueryApi, QueryError, error_body
from gpumon.rules.service import RuleService
from gpumon.sampler import Sampler
from gpumon.webconfig import WebSecurity

log = structlog.get_logger("gpumon.web")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_BODY_BYTES = 64 * 1024
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Prometheus's query API takes its parameters as a form in a POST too (Grafana's default): a read.
READ_POSTS = frozenset({"/api/v1/query", "/api/v1/query_range", "/api/v1/series", "/api/v1/labels"})


class ListenError(Exception):
    """The listen address cannot be bound (in use, not permitted, no such address)."""


class ConnectionGuard:
    """The protocol factory of the listening socket: caps live connections, making room by closing
    the oldest one that is not in the middle of a request, and closes connections that have not
    sent a complete request within `header_timeout`."""

    def __init__(self, server: web.Server, max_connections: int, header_timeout: float) -> None:
        self.server = server
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.opened: dict[RequestHandler, float] = {}  # insertion order: oldest first
        self.served: set[RequestHandler] = set()  # sent at least one complete request
        self.busy: set[RequestHandler] = set()  # handling a request now
        self.evicted = 0
        self.timed_out = 0

    def __call__(self) -> RequestHandler:
        loop = asyncio.get_running_loop()
        now = loop.time()
        live = set(self.server.connections)
        for h in [h for h, t in self.opened.items() if h not in live and now - t > 1.0]:  # gone
            self._forget(h)
        if len(live) >= self.max_connections:
            victim = next((h for h in self.opened if h in live and h not in self.busy), None)
            if victim is None:
                victim = next(iter(self.opened), None)
            if victim is not None:
                self.evicted += 1
                victim.force_close()
                self._forget(victim)
        handler = self.server()
        self.opened[handler] = now
        loop.call_later(self.header_timeout, self._check_first_request, handler)
        return handler

    def _check_first_request(self, handler: RequestHandler) -> None:
        if handler in self.opened and handler not in self.served:
            self.timed_out += 1
            handler.force_close()
            self._forget(handler)

    def _forget(self, handler: RequestHandler) -> None:
        self.opened.pop(handler, None)
        self.served.discard(handler)
        self.busy.discard(handler)

    def request_started(self, handler: RequestHandler) -> None:
        self.served.add(handler)
        self.busy.add(handler)

    def request_done(self, handler: RequestHandler) -> None:
        self.busy.discard(handler)


class WebServer:
    def __init__(self, sampler: Sampler, exporter: Exporter, backend: Backend, *,
                 rules: RuleService | None = None, silences: Silences | None = None,
                 health: Health | None = None, settings: WebConfig | None = None,
                 query: QueryApi | None = None) -> None:
        self.sampler = sampler
        self.backend = backend
        self.rules = rules
        self.silences = silences
        self.exporter = exporter
        self.health = health or Health()
        self.settings = settings or WebConfig()
        self.query = query
        self._assets = assets.load()
        self.security = WebSecurity()
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self.guard: ConnectionGuard | None = None
        self.bound: list[tuple[str, int]] = []
        self._listen: Listen | None = None

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=MAX_BODY_BYTES)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/", self.console)
        app.router.add_get("/static/{path:.+}", self.static)
        app.router.add_get("/-/healthy", self.healthy)
        app.router.add_get("/-/ready", self.ready)
        app.router.add_get("/api/v1/alerts", self.api_alerts)
        app.router.add_get("/api/v1/rules", self.api_rules)
        app.router.add_get("/api/v1/silences", self.list_silences)
        app.router.add_post("/api/v1/silences", self.create_silence)
        app.router.add_delete("/api/v1/silences/{id}", self.expire_silence)
        for path, handler in (("/api/v1/query", self.api_query), ("/api/v1/query_range", self.api_query_range),
                              ("/api/v1/series", self.api_series), ("/api/v1/labels", self.api_labels)):
            app.router.add_get(path, handler)
            app.router.add_post(path, handler)
        app.router.add_get("/api/v1/label/{name}/values", self.api_label_values)
        app.router.add_get("/api/v1/metadata", self.api_metadata)
        return app

    async def start(self, listen: Listen, security: WebSecurity) -> None:
        """Bind and serve; raises ListenError with a sentence the user can act on.

        The security settings take effect only once bound: after a ListenError, `self.security` is
        still the previous one, for a caller that falls back to the previous address.
        """
        # handler_cancellation: a query whose client hangs up stops (gpumon/query_api.py) instead of
        # running to its timeout for nobody.
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False,
                               keepalive_timeout=self.settings.idle_timeout, handler_cancellation=True)
        await runner.setup()
        assert runner.server is not None
        guard = ConnectionGuard(runner.server, self.settings.max_connections, self.settings.read_header_timeout)
        try:
            server = await asyncio.get_running_loop().create_server(
                guard, listen.host or None, listen.port, ssl=security.ssl_context, reuse_address=True)
        except OSError as exc:
            await runner.cleanup()
            raise ListenError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
        self.security, self._runner, self._server, self.guard = security, runner, server, guard
        self._listen = listen
        self.bound = [tuple(s.getsockname()[:2]) for s in server.sockets]

    @contextlib.asynccontextmanager
    async def serving(self, listen: Listen, security: WebSecurity) -> AsyncIterator[WebServer]:
        """Bound and serving inside the block (ListenError if it cannot bind), stopped after it."""
        await self.start(listen, security)
        try:
            yield self
        finally:
            await self.stop()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def can_keep_listener(self, listen: Listen, settings: WebConfig, security: WebSecurity) -> bool:
        """Whether a reload can apply these settings without binding again (which would drop
        connections and fail scrapes): same address, same connection limits, TLS on or off alike."""
        same_tls = (security.tls is None) == (self.security.tls is None) and security.tls == self.security.tls
        return (self._server is not None and listen == self._listen
                and (settings.max_connections, settings.read_header_timeout, settings.idle_timeout)
                == (self.settings.max_connections, self.settings.read_header_timeout, self.settings.idle_timeout)
                and same_tls)

    def keep_listener(self, settings: WebConfig, security: WebSecurity) -> None:
        """Apply a reload in place: users, headers and the write policy at once; a rotated
        certificate and key are loaded into the running TLS context for new connections."""
        if security.ssl_context is not None and self.security.ssl_context is not None and security.tls is not None:
            base = security.base
            self.security.ssl_context.load_cert_chain(base / security.tls.cert_file, base / security.tls.key_file)
            security.ssl_context = self.security.ssl_context
        self.security, self.settings = security, settings
        if self.query is not None:
            self.query.configure(settings.query)

    # --- the guard every request passes -----------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        protocol = request.protocol
        if self.guard is not None and isinstance(protocol, RequestHandler):
            self.guard.request_started(protocol)
        try:
            security, header = self.security, request.headers.get("Authorization")
            # bcrypt takes tens of milliseconds: off the event loop, which also runs the poll loops.
            if not (security.is_cached(header) or await asyncio.get_running_loop().run_in_executor(
                    None, security.check_authorization, header)):
                response: web.StreamResponse = web.Response(
                    status=401, text="Unauthorized\n", headers={"WWW-Authenticate": 'Basic realm="gpumon"'})
            elif request.method in WRITE_METHODS and request.path not in READ_POSTS \
                    and (refusal := self._write_refusal(request)) is not None:
                response = refusal
            else:
                response = await handler(request)
            for name, value in security.headers.items():
                response.headers[name] = value
            return response
        finally:
            if self.guard is not None and isinstance(protocol, RequestHandler):
                self.guard.request_done(protocol)

    def writes_allowed(self) -> tuple[bool, str]:
        """Whether the write endpoints answer, and why not."""
        policy = self.settings.write_endpoints
        if policy == "disabled":
            return False, "write endpoints are disabled (web.write_endpoints: disabled)"
        if policy == "enabled" or self.security.users or self._loopback_only():
            return True, ""
        return False, ("write endpoints (silences) need basic auth (basic_auth_users in the web-config) or a "
                       "loopback listen address; or set web.write_endpoints: enabled to allow anyone who can "
                       "connect")

    def _loopback_only(self) -> bool:
        return bool(self.bound) and all(_is_loopback(host) for host, _ in self.bound)

    def _write_refusal(self, request: web.Request) -> web.Response | None:
        allowed, why = self.writes_allowed()
        if not allowed:
            return _api_error(403, why)
        if request.method == "POST" and request.content_type != "application/json":
            return _api_error(415, "send JSON with Content-Type: application/json")
        origin = request.headers.get("Origin")
        if origin is not None and not _same_origin(origin, request):
            return _api_error(403, "cross-origin requests cannot write")
        if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
            return _api_error(403, "cross-site requests cannot write")
        trusting_loopback = self.settings.write_endpoints == "auto" and not self.security.users
        if trusting_loopback and not _is_loopback(_host_of(request.host)):
            # A page from elsewhere that made its own name resolve to 127.0.0.1 (DNS rebinding)
            # sends its own name as Host.
            return _api_error(403, "on a loopback listener, writes must name the host as localhost or a "
                                   "loopback address")
        return None

    # --- endpoints --------------------------------------------------------------------------------

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

    async def api_query(self, request: web.Request) -> web.Response:
        return await self._query_api(request, lambda q, params, match: q.query(params))

    async def api_query_range(self, request: web.Request) -> web.Response:
        return await self._query_api(request, lambda q, params, match: q.query_range(params))

    async def api_series(self, request: web.Request) -> web.Response:
        return await self._query_api(request, lambda q, params, match: q.series(params, match))

    async def api_labels(self, request: web.Request) -> web.Response:
        return await self._query_api(request, lambda q, params, match: q.labels(params, match))

    async def api_label_values(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        return await self._query_api(request, lambda q, params, match: q.label_values(name, params, match))

    async def api_metadata(self, request: web.Request) -> web.Response:
        return await self._query_api(request, lambda q, params, match: q.metadata(params))

    async def _query_api(self, request: web.Request, call: QueryCall) -> web.Response:
        """Parameters from the URL and, for a POST, the form body, as Prometheus takes them."""
        if self.query is None:
            return web.json_response({"status": "error", "errorType": "unavailable", "error": "no query API"},
                                     status=503)
        if _cross_site(request):
            # A page elsewhere cannot read the answer (no CORS), but could make gpumon work: refused.
            return web.json_response(error_body(QueryError(403, "bad_data", "cross-site queries are refused")),
                                     status=403)
        params = dict(request.query)
        match = request.query.getall("match[]", [])
        if request.method == "POST":
            if request.content_type not in ("application/x-www-form-urlencoded", "multipart/form-data", ""):
                return web.json_response(error_body(QueryError(400, "bad_data", "send the parameters as a form")),
                                         status=400)
            form = await request.post()
            params.update({k: v for k, v in form.items() if isinstance(v, str)})
            match += [v for v in form.getall("match[]", []) if isinstance(v, str)]
        try:
            called = call(self.query, params, match)  # the metadata endpoints answer at once, queries later
            answer = await called if inspect.isawaitable(called) else called
        except QueryError as exc:
            return web.json_response(error_body(exc), status=exc.status)
        except Exception as exc:  # a bug of gpumon's evaluator: that query's error, never a 500 page
            log.error("query failed", error=f"{type(exc).__name__}: {exc}", query=params.get("query", "")[:200])
            return web.json_response(error_body(QueryError(422, "execution", f"internal error: {type(exc).__name__}")),
                                     status=422)
        if isinstance(answer, str):  # JSON text made on the query's thread
            return web.Response(text=answer, content_type="application/json")
        return web.json_response(answer)

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
        except (ValueError, UnicodeDecodeError):  # json.JSONDecodeError is a ValueError
            return _api_error(400, "the body is not valid JSON")
        except web.HTTPRequestEntityTooLarge:
            return _api_error(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
        try:
            silence = self.silences.add(*parse_silence(body, time.time(), self.silences.limits))
        except SilenceError as exc:
            return _api_error(400, str(exc))
        except SilenceStoreError as exc:
            return _api_error(503, str(exc))
        return web.json_response({"status": "success", "data": silence.to_json(time.time())})

    async def expire_silence(self, request: web.Request) -> web.Response:
        try:
            if self.silences is None or not self.silences.expire(request.match_info["id"]):
                return _api_error(404, "no such silence")
        except SilenceStoreError as exc:
            return _api_error(503, str(exc))
        return web.json_response({"status": "success"})

    async def healthy(self, request: web.Request) -> web.Response:
        return web.Response(text="gpumon is healthy.\n")

    async def ready(self, request: web.Request) -> web.Response:
        if not self.sampler.ready.is_set():
            return web.Response(status=503, text="gpumon is not ready: no complete poll yet.\n")
        problems = self.health.problems
        if problems:
            lines = "".join(f"- {component}: {problem}\n" for component, problem in sorted(problems.items()))
            return web.Response(status=503, text="gpumon serves metrics but is degraded:\n" + lines)
        return web.Response(text="gpumon is ready.\n")

    async def console(self, request: web.Request) -> web.Response:
        """The console: every GPU's card, the alerts and silences (docs/console.md)."""
        now = time.time()
        alerts = self.rules.api_alerts()["data"]["alerts"] if self.rules is not None else []
        silences = [s.to_json(now) for s in self.silences.all()] if self.silences is not None else []
        page = render_console(devices=self.backend.devices, fresh=self.sampler.fresh(now), alerts=alerts,
                              silences=[s for s in silences if s["status"]["state"] != "expired"],
                              demo_note=self.backend.demo_note, backend=self.backend.name,
                              interval_s=self.sampler.intervals.fast,
                              writes=self.writes_allowed(),
                              history_s=self.query.retention_s if self.query is not None else 0.0)
        return web.Response(text=page, content_type="text/html", headers=PAGE_HEADERS)

    async def static(self, request: web.Request) -> web.Response:
        found = self._assets.get(request.match_info["path"])
        if found is None:
            raise web.HTTPNotFound()
        body, content_type = found
        # The page asks for each file with gpumon's version in the query string: cache for a day.
        return web.Response(body=body, content_type=content_type,
                            headers={**PAGE_HEADERS, "Cache-Control": "public, max-age=86400"})

    def sample_values(self) -> list[tuple[str, tuple[tuple[str, str], ...], float]]:
        """The listener's own numbers, for the health sample."""
        if self.guard is None or self._runner is None or self._runner.server is None:
            return []
        return [("gpumon_http_connections", (), float(len(self._runner.server.connections))),
                ("gpumon_http_connections_closed_total", (("reason", "evicted"),), float(self.guard.evicted)),
                ("gpumon_http_connections_closed_total", (("reason", "header_timeout"),),
                 float(self.guard.timed_out))]


QueryCall = Callable[[QueryApi, dict[str, str], list[str]], dict[str, Any] | Awaitable[str]]


def _cross_site(request: web.Request) -> bool:
    """Sent by a browser on another site's behalf (curl, Prometheus tools and Grafana's server-side
    proxy send neither header)."""
    origin = request.headers.get("Origin")
    return (origin is not None and not _same_origin(origin, request)) or \
        request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none")


def _api_error(status: int, message: str) -> web.Response:
    return web.json_response({"status": "error", "error": message}, status=status)


def _host_of(netloc: str) -> str:
    """The host of a Host header or URL authority: `[::1]:9948` -> `::1`, `localhost:9948` -> `localhost`."""
    if netloc.startswith("["):
        return netloc[1:].split("]", 1)[0]
    return netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc


def _is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _same_origin(origin: str, request: web.Request) -> bool:
    """A browser's Origin header against this request's own scheme and Host."""
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    return parts.scheme == request.scheme and parts.netloc.lower() == request.host.lower()

