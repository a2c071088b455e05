"""The HTTP endpoints, served for real on loopback from a sampler over the bundled replay capture."""

from __future__ import annotations

import asyncio
import base64
import gzip
import html
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import bcrypt
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from gpumon.backend import Backend
from gpumon.config import Listen
from gpumon.exporter import OPENMETRICS_TYPE, TEXT_TYPE, Exporter
from gpumon.model import Tier
from gpumon.sampler import Intervals, Sampler
from gpumon.sources.nvml import NvmlSource
from gpumon.sources.replay import parse_replay_spec, replay_source
from gpumon.store import Store
from gpumon.web import ListenError, WebServer
from gpumon.webconfig import WebSecurity, load_web_config
from tests.support.net import free_port
from tests.support.tls import Pki, make_pki

PASSWORD = "scrape-me"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4))
Serve = Callable[..., Awaitable[tuple[WebServer, str]]]


def make_sampler() -> tuple[Sampler, Exporter]:
    source = replay_source(parse_replay_spec("replay:demo,loop"))
    exporter = Exporter()
    sampler = Sampler([source], Store(100), Intervals(0.2, 1.0))
    exporter.follow(sampler.rounds, sampler.fresh)
    return sampler, exporter


def backend_of(sampler: Sampler, capture: str | None = None) -> Backend:
    """The sampler's sources as the daemon's Backend; `capture` renames the replayed capture."""
    gpus = sampler.sources[0]
    assert isinstance(gpus, NvmlSource)
    if capture is not None:
        gpus.capture = capture
    return Backend(gpus, list(sampler.sources))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def opened() -> AsyncIterator[tuple[Sampler, Exporter]]:
    """A sampler that has read static facts only: not ready yet."""
    sampler, exporter = make_sampler()
    await sampler.open()
    try:
        yield sampler, exporter
    finally:
        await sampler.stop()


@pytest.fixture
async def polled(opened: tuple[Sampler, Exporter]) -> tuple[Sampler, Exporter]:
    """A sampler after one complete fast round (two GPM samples apart, so SM activity is there)."""
    sampler, _ = opened
    await asyncio.sleep(0.15)
    await sampler.poll_round(Tier.FAST)
    assert sampler.ready.is_set()
    return opened


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start WebServers on free loopback ports; all are stopped at the end of the test."""
    servers: list[WebServer] = []

    async def start(sampler: Sampler, exporter: Exporter, security: WebSecurity | None = None,
                    capture: str | None = None) -> tuple[WebServer, str]:
        server = WebServer(sampler, exporter, backend_of(sampler, capture))
        servers.append(server)
        security = security or WebSecurity()
        port = free_port()
        await server.start(Listen("127.0.0.1", port), security)
        scheme = "https" if security.ssl_context else "http"
        return server, f"{scheme}://127.0.0.1:{port}"

    try:
        yield start
    finally:
        for server in servers:
            await server.stop()


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def sample_names(families: object) -> set[str]:
    return {s.name for family in families for s in family.samples}  # type: ignore[attr-defined]


# --- /metrics ------------------------------------------------------------------------------------


async def test_metrics_text_exposition(polled: tuple[Sampler, Exporter], serve: Serve) -> None:
    server, url = await serve(*polled)
    assert server.bound and server.bound[0][0] == "127.0.0.1"
    identity = {"Accept-Encoding": "identity"}  # aiohttp asks for gzip by default
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics", headers=identity) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == TEXT_TYPE
        assert "Content-Encoding" not in resp.headers
        assert "Accept-Encoding" in resp.headers["Vary"]
        body = await resp.text()
    families = list(text_string_to_metric_families(body))
    names = sample_names(families)
    assert "gpumon_gpu_info" in names
    assert "gpumon_sm_active_ratio" in names
    assert "gpumon_build_info" in names
    info = next(s for f in families for s in f.samples if s.name == "gpumon_gpu_info")
    assert info.labels["name"] == backend_of(polled[0]).devices[0].name
    build = next(s for f in families for s in f.samples if s.name == "gpumon_build_info")
    assert build.labels["backend"] == "replay"
    assert "# EOF" not in body


async def test_metrics_openmetrics(polled: tuple[Sampler, Exporter], serve: Serve) -> None:
    _, url = await serve(*polled)
    accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75," \
             "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"  # what Prometheus sends
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics", headers={"Accept": accept}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == OPENMETRICS_TYPE
        body = await resp.text()
    assert body.endswith("# EOF\n")
    names = sample_names(list(parse_openmetrics(body)))  # the strict OpenMetrics parser accepts it
    assert {"gpumon_gpu_info", "gpumon_sm_active_ratio"} <= names


@pytest.mark.parametrize("openmetrics", [False, True])
async def test_metrics_gzip(polled: tuple[Sampler, Exporter], serve: Serve, openmetrics: bool) -> None:
    _, url = await serve(*polled)
    headers = {"Accept-Encoding": "gzip, deflate"}
    if openmetrics:
        headers["Accept"] = "application/openmetrics-text"
    async with aiohttp.ClientSession(auto_decompress=False) as session, \
            session.get(f"{url}/metrics", headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Encoding"] == "gzip"
        raw = await resp.read()
    text = gzip.decompress(raw).decode()
    assert "gpumon_sm_active_ratio" in text
    assert text.endswith("# EOF\n") == openmetrics
    # and a client that decompresses gets the same exposition
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics", headers=headers) as resp:
        assert await resp.text() == text


async def test_metrics_are_the_cached_render(polled: tuple[Sampler, Exporter], serve: Serve) -> None:
    sampler, exporter = polled
    _, url = await serve(sampler, exporter)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/metrics") as resp:
            first = await resp.read()
        async with session.get(f"{url}/metrics") as resp:
            assert await resp.read() == first  # no poll in between: the same bytes
        assert exporter.current is not None
        assert first == exporter.current.text


async def test_head_request(polled: tuple[Sampler, Exporter], serve: Serve) -> None:
    _, url = await serve(*polled)
    async with aiohttp.ClientSession() as session, session.head(f"{url}/metrics") as resp:
        assert resp.status == 200


async def test_unknown_path_is_404(polled: tuple[Sampler, Exporter], serve: Serve) -> None:
    _, url = await serve(*polled)
    async with aiohttp.ClientSession() as session, session.get(f"{url}/nope") as resp:
        assert resp.status == 404


async def test_metrics_before_any_render_are_empty(serve: Serve) -> None:
    sampler, exporter = make_sampler()  # never opened: nothing rendered yet
    try:
        _, url = await serve(sampler, exporter)
        async with aiohttp.ClientSession() as session, \
                session.get(f"{url}/metrics", headers={"Accept-Encoding": "gzip"}) as resp:
            assert resp.status == 200
            assert "Content-Encoding" not in resp.headers  # no gzip header on an empty (non-gzip) body
            assert await resp.read() == b""
    finally:
        await sampler.stop()


# --- health, readiness, landing page -------------------------------------------------------------


async def test_healthy(opened: tuple[Sampler, Exporter], serve: Serve) -> None:
    _, url = await serve(*opened)
    async with aiohttp.ClientSession() as session, session.get(f"{url}/-/healthy") as resp:
        assert resp.status == 200
        assert "healthy" in await resp.text()


async def test_ready_only_after_a_fast_poll(opened: tuple[Sampler, Exporter], serve: Serve) -> None:
    sampler, _ = opened
    _, url = await serve(*opened)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/-/ready") as resp:
            assert resp.status == 503
            assert "not ready" in await resp.text()
        await sampler.poll_round(Tier.FAST)
        async with session.get(f"{url}/-/ready") as resp:
            assert resp.status == 200
            assert "is ready" in await resp.text()


async def test_the_console_page_without_javascript(polled: tuple[Sampler, Exporter], serve: Serve) -> None:
    """The page alone (no script run) names every GPU with its latest figures, the DEMO banner, the
    alerts and silences, under a strict Content-Security-Policy: no inline script or style anywhere."""
    sampler, exporter = polled
    _, url = await serve(sampler, exporter, capture="<the> bundled capture")
    async with aiohttp.ClientSession() as session, session.get(f"{url}/") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        csp = resp.headers["Content-Security-Policy"]
        page = await resp.text()
    assert "DEMO DATA" in page
    assert "replaying a recorded capture (&lt;the&gt; bundled capture)" in page  # escaped
    devices = backend_of(sampler).devices
    assert devices
    for device in devices:
        assert html.escape(device.name) in page
        assert device.uuid in page
        assert f'data-gpu="{device.index}"' in page
    assert 'data-metric="gpumon_memory_total_bytes">140.4 GiB<' in page  # the H200's, read at start-up
    assert "Backend <strong>replay</strong>" in page and 'href="/metrics"' in page
    assert "No alert is pending or firing." in page and "No silence." in page
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "<script>" not in page and " style=" not in page and "javascript:" not in page
    assert page.count("<script src=") == 2


async def test_the_console_without_demo_note(polled: tuple[Sampler, Exporter], serve: Serve) -> None:
    _, url = await serve(*polled, capture="")  # real GPUs
    async with aiohttp.ClientSession() as session, session.get(f"{url}/") as resp:
        assert "DEMO DATA" not in await resp.text()


async def test_static_files_come_from_a_fixed_table(polled: tuple[Sampler, Exporter], serve: Serve) -> None:
    _, url = await serve(*polled)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/static/console.js") as resp:
            assert resp.status == 200 and resp.content_type == "text/javascript"
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
        async with session.get(f"{url}/static/vendor/uplot/uPlot.iife.min.js") as resp:
            assert resp.status == 200 and b"uPlot" in await resp.read()
        for path in ("/static/../web.py", "/static/%2e%2e/web.py", "/static/..%2f..%2fweb.py", "/static/nope.js",
                     "/static//etc/passwd"):
            async with session.get(f"{url}{path}") as resp:
                assert resp.status == 404, path


# --- basic auth and headers ----------------------------------------------------------------------


@pytest.fixture
def auth_security() -> WebSecurity:
    return WebSecurity(users={"prometheus": HASH}, headers={"X-Frame-Options": "deny"})


async def test_basic_auth(polled: tuple[Sampler, Exporter], serve: Serve, auth_security: WebSecurity) -> None:
    _, url = await serve(*polled, security=auth_security)
    async with aiohttp.ClientSession() as session:
        for path in ("/metrics", "/", "/-/healthy", "/-/ready"):
            async with session.get(f"{url}{path}") as resp:
                assert resp.status == 401, path
                assert resp.headers["WWW-Authenticate"] == 'Basic realm="gpumon"'
                assert resp.headers["X-Frame-Options"] == "deny"
        async with session.get(f"{url}/metrics", headers=basic("prometheus", "wrong")) as resp:
            assert resp.status == 401
        async with session.get(f"{url}/metrics", headers=basic("nobody", PASSWORD)) as resp:
            assert resp.status == 401
        async with session.get(f"{url}/metrics", headers={"Authorization": "Bearer abc"}) as resp:
            assert resp.status == 401
        async with session.get(f"{url}/metrics", headers=basic("prometheus", "x" * 100)) as resp:
            assert resp.status == 401  # bcrypt 5 refuses > 72 bytes: still a plain 401, not a 500
        for _ in range(2):  # the second time from the cache
            async with session.get(f"{url}/metrics", headers=basic("prometheus", PASSWORD)) as resp:
                assert resp.status == 200
                assert resp.headers["X-Frame-Options"] == "deny"
                assert "gpumon_gpu_info" in await resp.text()


async def test_bcrypt_does_not_block_the_event_loop(polled: tuple[Sampler, Exporter], serve: Serve,
                                                    auth_security: WebSecurity,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    real = bcrypt.checkpw

    def slow_checkpw(password: bytes, hashed: bytes) -> bool:
        time.sleep(0.4)
        return bool(real(password, hashed))

    monkeypatch.setattr(bcrypt, "checkpw", slow_checkpw)
    _, url = await serve(*polled, security=auth_security)
    lags: list[float] = []

    async def ticker() -> None:
        loop = asyncio.get_running_loop()
        for _ in range(20):
            t0 = loop.time()
            await asyncio.sleep(0.02)
            lags.append(loop.time() - t0 - 0.02)

    async with aiohttp.ClientSession() as session:
        tick = asyncio.create_task(ticker())
        async with session.get(f"{url}/metrics", headers=basic("prometheus", "wrong")) as resp:
            assert resp.status == 401
        await tick
    assert max(lags) < 0.3, lags


# --- TLS -----------------------------------------------------------------------------------------


def client_context(pki: Pki, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


CONNECT_FAILURES = (aiohttp.ClientError, ssl.SSLError, ConnectionResetError)


def tls_web_config(tmp_path: Path, pki: Pki, extra: str = "") -> Path:
    path = tmp_path / "web.yml"
    path.write_text(f"tls_server_config:\n  cert_file: {pki.server_cert}\n  key_file: {pki.server_key}\n{extra}")
    return path


async def get_status(url: str, ctx: ssl.SSLContext, headers: dict[str, str] | None = None) -> int:
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session, \
            session.get(url, ssl=ctx, headers=headers) as resp:
        await resp.read()
        return resp.status


async def test_tls_server(polled: tuple[Sampler, Exporter], serve: Serve, pki: Pki, tmp_path: Path) -> None:
    _, url = await serve(*polled, security=load_web_config(tls_web_config(tmp_path, pki)))
    assert url.startswith("https://")
    assert await get_status(f"{url}/metrics", client_context(pki)) == 200
    # localhost is in the certificate too
    assert await get_status(f"{url.replace('127.0.0.1', 'localhost')}/-/healthy", client_context(pki)) == 200
    # a client that does not trust the CA refuses the server
    with pytest.raises(CONNECT_FAILURES):
        await get_status(f"{url}/metrics", ssl.create_default_context())
    # plain HTTP to a TLS port gets no metrics
    with pytest.raises(CONNECT_FAILURES):
        await get_status(f"{url.replace('https', 'http')}/metrics", client_context(pki))


async def test_tls_require_and_verify_client_cert(polled: tuple[Sampler, Exporter], serve: Serve, pki: Pki,
                                                  tmp_path: Path) -> None:
    extra = f"  client_ca_file: {pki.ca_cert}\n  client_auth_type: RequireAndVerifyClientCert\n"
    _, url = await serve(*polled, security=load_web_config(tls_web_config(tmp_path, pki, extra)))
    with pytest.raises(CONNECT_FAILURES):
        await get_status(f"{url}/metrics", client_context(pki))
    with pytest.raises(CONNECT_FAILURES):  # a certificate from another CA
        await get_status(f"{url}/metrics", client_context(pki, pki.other_client_cert, pki.other_client_key))
    assert await get_status(f"{url}/metrics", client_context(pki, pki.client_cert, pki.client_key)) == 200


@pytest.mark.parametrize(("auth", "ok"), [
    ("VerifyClientCertIfGiven", {"none", "client"}),
    ("RequestClientCert", {"none", "client", "other"}),  # as in Go: any client, with or without a certificate
    ("RequireAnyClientCert", {"client"}),  # needs client_ca_file here, and verifies against it
])
async def test_tls_other_client_auth_types(polled: tuple[Sampler, Exporter], serve: Serve, pki: Pki,
                                           tmp_path: Path, auth: str, ok: set[str]) -> None:
    extra = f"  client_ca_file: {pki.ca_cert}\n  client_auth_type: {auth}\n"
    _, url = await serve(*polled, security=load_web_config(tls_web_config(tmp_path, pki, extra)))
    clients = {"none": client_context(pki), "client": client_context(pki, pki.client_cert, pki.client_key),
               "other": client_context(pki, pki.other_client_cert, pki.other_client_key)}
    for name, ctx in clients.items():
        if name in ok:
            assert await get_status(f"{url}/metrics", ctx) == 200, name
        else:
            with pytest.raises(CONNECT_FAILURES):
                await get_status(f"{url}/metrics", ctx)


async def test_tls_and_basic_auth_together(polled: tuple[Sampler, Exporter], serve: Serve, pki: Pki,
                                           tmp_path: Path) -> None:
    extra = f"basic_auth_users:\n  prometheus: {HASH.decode()}\n"
    _, url = await serve(*polled, security=load_web_config(tls_web_config(tmp_path, pki, extra)))
    assert await get_status(f"{url}/metrics", client_context(pki)) == 401
    assert await get_status(f"{url}/metrics", client_context(pki), basic("prometheus", PASSWORD)) == 200


# --- listening -----------------------------------------------------------------------------------


async def test_port_in_use_is_a_listen_error(polled: tuple[Sampler, Exporter]) -> None:
    sampler, exporter = polled
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = WebServer(sampler, exporter, backend_of(sampler))
        previous = server.security
        try:
            with pytest.raises(ListenError, match=rf"cannot listen on 127\.0\.0\.1:{port}: ") as info:
                await server.start(Listen("127.0.0.1", port), WebSecurity(users={"u": HASH}))
            assert "cannot listen on" in str(info.value)
            assert server.security is previous  # a failed start leaves the previous security in place
            assert server.bound == []
        finally:
            await server.stop()


async def test_address_not_on_this_machine_is_a_listen_error(polled: tuple[Sampler, Exporter]) -> None:
    server = WebServer(*polled, backend_of(polled[0]))
    try:
        with pytest.raises(ListenError, match=r"cannot listen on 192\.0\.2\.1:"):
            await server.start(Listen("192.0.2.1", free_port()), WebSecurity())  # TEST-NET-1
    finally:
        await server.stop()


async def test_stop_frees_the_port_and_restart_works(polled: tuple[Sampler, Exporter]) -> None:
    server = WebServer(*polled, backend_of(polled[0]))
    listen = Listen("127.0.0.1", free_port())
    try:
        await server.start(listen, WebSecurity())
        await server.stop()
        await server.stop()  # idempotent
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientConnectionError):
                await session.get(f"http://{listen}/-/healthy")
        await server.start(listen, WebSecurity())
        async with aiohttp.ClientSession() as session, session.get(f"http://{listen}/-/healthy") as resp:
            assert resp.status == 200
    finally:
        await server.stop()
