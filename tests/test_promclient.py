"""The fleet commands' Prometheus client: a redirect is refused (urllib would send the credentials on
to wherever it points), and a bad --http.config.file is a sentence naming the key."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpumon.promclient import http_settings, query
from gpumon.yamlfile import ConfigError

seen: list[str | None] = []


class _Redirecting(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        seen.append(self.headers.get("Authorization"))
        self.send_response(302)
        self.send_header("Location", f"http://127.0.0.1:{self.server.server_address[1]}/elsewhere")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def redirecting() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Redirecting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_a_redirect_is_refused_and_the_credentials_go_nowhere_else(redirecting: str, tmp_path: Path) -> None:
    (tmp_path / "token").write_text("s3cret\n")
    (tmp_path / "http.yml").write_text(f"bearer_token_file: {tmp_path / 'token'}\n")
    seen.clear()
    with pytest.raises(ConfigError, match="answered 302"):
        query(redirecting, "up", 0.0, http_settings(tmp_path / "http.yml"))
    assert seen == ["Bearer s3cret"]  # the one request to the server asked; none to where it pointed


@pytest.mark.parametrize(("config", "words"), [
    ("tls_config: {server_name: prom.internal}\n", "tls_config.server_name: not supported"),
    ("tls_config: {ca_file: /nonexistent/ca.pem}\n", "tls_config:"),
])
def test_a_bad_client_configuration_names_the_key(tmp_path: Path, config: str, words: str) -> None:
    (tmp_path / "http.yml").write_text(config)
    with pytest.raises(ConfigError, match=words):
        http_settings(tmp_path / "http.yml")


class _Refusing(http.server.BaseHTTPRequestHandler):
    """A 422 with Prometheus's error JSON for `bad`, a proxy's HTML 502 for `proxy`, a success whose
    result is not an instant vector for `matrix`."""

    def do_GET(self) -> None:
        if "query=bad" in self.path:
            status, body = 422, (b'{"status":"error","errorType":"execution",'
                                 b'"error":"many-to-many matching\\n not allowed"}')
        elif "query=proxy" in self.path:
            status, body = 502, b"<html>Bad Gateway</html>"
        else:
            status, body = 200, (b'{"status":"success","data":{"resultType":"matrix",'
                                 b'"result":[{"metric":{},"values":[]}]}}')
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return None


def test_a_refused_query_says_prometheuss_error(tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/prom?token=s3cret"
    try:
        with pytest.raises(ConfigError) as refused:
            query(url, "bad", 0.0, http_settings(None))
        with pytest.raises(ConfigError) as proxied:
            query(url, "proxy", 0.0, http_settings(None))
        with pytest.raises(ConfigError) as matrix:
            query(url, "matrix", 0.0, http_settings(None))
    finally:
        server.shutdown()
        server.server_close()
    assert str(refused.value).endswith("answered 422 Unprocessable Entity: many-to-many matching not allowed")
    assert str(proxied.value).endswith("answered 502 Bad Gateway")  # not its HTML
    assert str(matrix.value).endswith("the answer is not an instant vector")  # not a KeyError later
    assert all("s3cret" not in str(e.value) for e in (refused, proxied, matrix))
