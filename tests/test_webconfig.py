"""The exporter-toolkit web-config file: basic auth with bcrypt hashes, TLS, extra headers."""

from __future__ import annotations

import base64
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpumon import webconfig
from gpumon.webconfig import WebSecurity, load_web_config
from gpumon.yamlfile import ConfigError
from tests.support.tls import Pki, make_pki

PASSWORD = "s3cret"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def write(directory: Path, text: str, name: str = "web.yml") -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_web_config(path)
    return str(info.value)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# --- the file ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "# nothing\n", "---\n", "{}\n", "basic_auth_users:\ntls_server_config:\n"])
def test_empty_file_means_no_security(tmp_path: Path, text: str) -> None:
    security = load_web_config(write(tmp_path, text))
    assert security.ssl_context is None
    assert security.users == {}
    assert security.headers == {}
    assert security.check_authorization(None)


def test_basic_auth_users_and_headers(tmp_path: Path) -> None:
    path = write(tmp_path, f"basic_auth_users:\n  prometheus: {HASH}\n  'no': {HASH}\n"
                           "http_server_config:\n  headers:\n    X-Frame-Options: deny\n")
    security = load_web_config(path)
    assert security.users == {"prometheus": HASH.encode(), "no": HASH.encode()}
    assert security.headers == {"X-Frame-Options": "deny"}
    assert security.ssl_context is None
    assert security.check_authorization(basic("prometheus", PASSWORD))
    assert security.check_authorization(basic("no", PASSWORD))  # a YAML 1.1 boolean stays a user name
    assert not security.check_authorization(basic("prometheus", "wrong"))


def test_user_names_are_the_keys_as_written(tmp_path: Path) -> None:
    path = write(tmp_path, f"basic_auth_users:\n  on: {HASH}\n  010: {HASH}\n  1.0: {HASH}\n")
    assert set(load_web_config(path).users) == {"on", "010", "1.0"}


@pytest.mark.parametrize("prefix", ["$2a$", "$2y$"])
def test_other_bcrypt_prefixes(tmp_path: Path, prefix: str) -> None:
    hashed = prefix + HASH[4:]
    security = load_web_config(write(tmp_path, f"basic_auth_users:\n  u: '{hashed}'\n"))
    assert security.check_authorization(basic("u", PASSWORD))


def test_plain_text_password_is_rejected_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, f"basic_auth_users:\n  prometheus: {HASH}\n  grafana: hunter2\n")
    assert error_of(path) == (f"{path}:3: basic_auth_users.grafana: password must be a bcrypt hash ($2b$...), "
                              "not plain text")


@pytest.mark.parametrize("hashed", [
    "$2b$garbage", "$2b$04$short", "$2b$99$" + HASH[7:], "$2b$4$" + HASH[7:], HASH + "x", HASH[:-1],
])
def test_malformed_bcrypt_hash_is_rejected_at_load(tmp_path: Path, hashed: str) -> None:
    path = write(tmp_path, f"basic_auth_users:\n  u: '{hashed}'\n")
    assert error_of(path).startswith(f"{path}:2: basic_auth_users.u: not a valid bcrypt hash")


def test_non_string_password_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "basic_auth_users:\n  u: 12345\n")
    assert error_of(path).startswith(f"{path}:2: basic_auth_users.u: ")


@pytest.mark.parametrize(("text", "line", "key"), [
    ("basic_auth_user:\n  u: x\n", 1, "basic_auth_user"),
    ("http_server_config:\n  headers: {}\n  http2: true\n", 3, "http_server_config.http2"),
    ("tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher: x\n", 4, "tls_server_config.cipher"),
])
def test_unknown_key_is_rejected(tmp_path: Path, text: str, line: int, key: str) -> None:
    path = write(tmp_path, text)
    assert error_of(path) == f"{path}:{line}: {key}: unknown key"


def test_missing_required_tls_key_names_the_section(tmp_path: Path) -> None:
    path = write(tmp_path, "# tls\ntls_server_config:\n  cert_file: server.crt\n")
    assert error_of(path) == f"{path}:2: tls_server_config.key_file: required key is missing"


def test_bad_client_auth_type(tmp_path: Path) -> None:
    path = write(tmp_path, "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: Always\n")
    assert error_of(path).startswith(f"{path}:4: tls_server_config.client_auth_type: 'Always' is not 'NoClientCert'")


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "- a\n- b\n")
    assert error_of(path).startswith(f"{path}:1: (top level): ")


def test_missing_web_config_file(tmp_path: Path) -> None:
    assert error_of(tmp_path / "nope.yml") == f"{tmp_path / 'nope.yml'}: file not found"


# --- TLS -----------------------------------------------------------------------------------------


def tls_file(directory: Path, pki: Pki, extra: str = "", *, cert: str | None = None, key: str | None = None) -> Path:
    return write(directory, "tls_server_config:\n"
                            f"  cert_file: {cert or pki.server_cert}\n"
                            f"  key_file: {key or pki.server_key}\n" + extra)


def test_tls_without_client_certificates(tmp_path: Path, pki: Pki) -> None:
    ctx = load_web_config(tls_file(tmp_path, pki)).ssl_context
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_NONE
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2


def test_tls_with_client_ca_requires_and_verifies_by_default(tmp_path: Path, pki: Pki) -> None:
    ctx = load_web_config(tls_file(tmp_path, pki, f"  client_ca_file: {pki.ca_cert}\n")).ssl_context
    assert ctx is not None
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.cert_store_stats()["x509_ca"] == 1


@pytest.mark.parametrize(("auth", "mode"), [
    ("NoClientCert", ssl.CERT_NONE),
    ("RequestClientCert", ssl.CERT_NONE),  # Go accepts any certificate; Python cannot, so it does not ask
    ("RequireAnyClientCert", ssl.CERT_REQUIRED),  # verified against client_ca_file: Python cannot skip that
    ("VerifyClientCertIfGiven", ssl.CERT_OPTIONAL),
    ("RequireAndVerifyClientCert", ssl.CERT_REQUIRED),
])
def test_client_auth_types(tmp_path: Path, pki: Pki, auth: str, mode: ssl.VerifyMode) -> None:
    path = tls_file(tmp_path, pki, f"  client_ca_file: {pki.ca_cert}\n  client_auth_type: {auth}\n")
    ctx = load_web_config(path).ssl_context
    assert ctx is not None
    assert ctx.verify_mode == mode


def test_tls_versions(tmp_path: Path, pki: Pki) -> None:
    ctx = load_web_config(tls_file(tmp_path, pki, "  min_version: TLS13\n  max_version: TLS13\n")).ssl_context
    assert ctx is not None
    assert (ctx.minimum_version, ctx.maximum_version) == (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_3)
    path = tls_file(tmp_path, pki, "  min_version: TLS13\n  max_version: TLS12\n")
    assert error_of(path) == f"{path}:5: tls_server_config.max_version: TLS12 is below min_version TLS13"
    path = tls_file(tmp_path, pki, "  min_version: TLS10\n")
    assert error_of(path).startswith(f"{path}:4: tls_server_config.min_version: ")


def test_request_client_cert_without_a_ca(tmp_path: Path, pki: Pki) -> None:
    ctx = load_web_config(tls_file(tmp_path, pki, "  client_auth_type: RequestClientCert\n")).ssl_context
    assert ctx is not None
    assert ctx.verify_mode == ssl.CERT_NONE


@pytest.mark.parametrize("auth", ["RequireAndVerifyClientCert", "VerifyClientCertIfGiven", "RequireAnyClientCert"])
def test_verifying_client_auth_needs_a_client_ca(tmp_path: Path, pki: Pki, auth: str) -> None:
    path = tls_file(tmp_path, pki, f"  client_auth_type: {auth}\n")
    assert error_of(path) == f"{path}:4: tls_server_config.client_auth_type: {auth} needs client_ca_file"


def test_missing_cert_file_names_the_file_and_key(tmp_path: Path, pki: Pki) -> None:
    missing = tmp_path / "missing.crt"
    path = tls_file(tmp_path, pki, cert=str(missing))
    message = error_of(path)
    assert message.startswith(f"{path}:2: tls_server_config.cert_file: ")
    assert str(missing) in message


def test_missing_key_file_names_the_file_and_key(tmp_path: Path, pki: Pki) -> None:
    path = tls_file(tmp_path, pki, key="missing.key")
    message = error_of(path)
    assert message.startswith(f"{path}:3: tls_server_config.key_file: ")
    assert str(tmp_path / "missing.key") in message


def test_mismatched_or_invalid_key(tmp_path: Path, pki: Pki) -> None:
    path = tls_file(tmp_path, pki, key=str(pki.client_key))
    assert error_of(path).startswith(f"{path}:2: tls_server_config.cert_file/key_file: cannot load ")
    junk = tmp_path / "junk.crt"
    junk.write_text("not a certificate\n")
    path = tls_file(tmp_path, pki, cert=str(junk))
    assert str(junk) in error_of(path)


def test_missing_or_invalid_client_ca(tmp_path: Path, pki: Pki) -> None:
    path = tls_file(tmp_path, pki, "  client_ca_file: nope.crt\n")
    message = error_of(path)
    assert message.startswith(f"{path}:4: tls_server_config.client_ca_file: cannot load ")
    assert str(tmp_path / "nope.crt") in message
    junk = tmp_path / "junk.crt"
    junk.write_text("junk\n")
    path = tls_file(tmp_path, pki, f"  client_ca_file: {junk}\n")
    assert error_of(path).startswith(f"{path}:4: tls_server_config.client_ca_file: cannot load ")


def test_relative_paths_are_relative_to_the_web_config_file(tmp_path: Path, pki: Pki,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # not the directory of the files
    path = pki.dir / "web.yml"
    path.write_text("tls_server_config:\n  cert_file: server.crt\n  key_file: ./server.key\n"
                    "  client_ca_file: ca.crt\n")
    ctx = load_web_config(path).ssl_context
    assert ctx is not None
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    # and a relative web-config path works too
    nested = tmp_path / "conf"
    nested.mkdir()
    (nested / "web.yml").write_text(f"tls_server_config:\n  cert_file: {pki.server_cert}\n  key_file: server.key\n")
    message = error_of(Path("conf/web.yml"))
    assert "conf/server.key" in message and "tls_server_config.key_file" in message


# --- check_authorization -------------------------------------------------------------------------


@pytest.fixture
def security() -> Iterator[WebSecurity]:
    yield WebSecurity(users={"prometheus": HASH.encode(), "grafana": bcrypt.hashpw(b"other", bcrypt.gensalt(4))})


def test_no_users_allows_everything() -> None:
    security = WebSecurity()
    for header in (None, "", "Bearer x", basic("a", "b")):
        assert security.check_authorization(header)
        assert security.is_cached(header)


def test_right_and_wrong_password(security: WebSecurity) -> None:
    assert security.check_authorization(basic("prometheus", PASSWORD))
    assert security.check_authorization(basic("grafana", "other"))
    assert not security.check_authorization(basic("prometheus", "other"))
    assert not security.check_authorization(basic("grafana", PASSWORD))
    assert not security.check_authorization(basic("prometheus", ""))
    assert not security.check_authorization(basic("prometheus", PASSWORD + " "))


def test_unknown_user(security: WebSecurity) -> None:
    assert not security.check_authorization(basic("admin", PASSWORD))
    assert not security.check_authorization(basic("", PASSWORD))


@pytest.mark.parametrize("header", [
    None, "", "Basic", "Basic ", "Basic !!!notbase64", "Basic " + base64.b64encode(b"no-colon").decode(),
    "Basic " + base64.b64encode(b"\xff\xfe:x").decode(), "Basic cHJvbWV0aGV1czpzM2NyZXQ",  # bad padding
])
def test_malformed_header(security: WebSecurity, header: str | None) -> None:
    assert not security.check_authorization(header)
    assert not security.is_cached(header)


@pytest.mark.parametrize("scheme", ["Bearer", "Digest", "Basicx"])
def test_other_schemes_are_refused(security: WebSecurity, scheme: str) -> None:
    encoded = base64.b64encode(f"prometheus:{PASSWORD}".encode()).decode()
    assert not security.check_authorization(f"{scheme} {encoded}")


def test_scheme_is_case_insensitive(security: WebSecurity) -> None:
    encoded = base64.b64encode(f"prometheus:{PASSWORD}".encode()).decode()
    assert security.check_authorization(f"basic {encoded}")
    assert security.check_authorization(f"BASIC {encoded}")


def test_password_may_contain_colons_and_unicode(tmp_path: Path) -> None:
    password = "a:b:ç✓"
    security = WebSecurity(users={"u": bcrypt.hashpw(password.encode(), bcrypt.gensalt(4))})
    assert security.check_authorization(basic("u", password))
    assert not security.check_authorization(basic("u", "a"))


def test_overlong_password_is_wrong_not_an_error(security: WebSecurity) -> None:
    # bcrypt 5 raises ValueError for passwords over 72 bytes
    assert not security.check_authorization(basic("prometheus", "x" * 100))
    assert not security.check_authorization(basic("nobody", "x" * 100))


def test_cache_hit_skips_bcrypt(security: WebSecurity, monkeypatch: pytest.MonkeyPatch) -> None:
    header = basic("prometheus", PASSWORD)
    assert not security.is_cached(header)
    assert security.check_authorization(header)
    assert security.is_cached(header)

    def fail(password: bytes, hashed: bytes) -> bool:
        raise AssertionError("bcrypt called on a cache hit")

    monkeypatch.setattr(bcrypt, "checkpw", fail)
    assert security.check_authorization(header)
    assert security.check_authorization("basic " + header.split()[1])  # same credentials, other spelling


def test_failures_are_not_cached(security: WebSecurity) -> None:
    header = basic("prometheus", "wrong")
    assert not security.check_authorization(header)
    assert not security.is_cached(header)
    assert security._verified == {}


def test_cache_does_not_confuse_user_and_password(tmp_path: Path) -> None:
    # "a" with password "b\0c" must not open the door to user "a\0b" with password "c"
    security = WebSecurity(users={"a": bcrypt.hashpw(b"b\0c", bcrypt.gensalt(4))})
    assert security.check_authorization(basic("a", "b\0c"))
    assert not security.check_authorization(basic("a\0b", "c"))


def test_cache_is_bounded(security: WebSecurity, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bcrypt, "checkpw", lambda password, hashed: True)
    for i in range(webconfig._AUTH_CACHE_SIZE * 3):
        assert security.check_authorization(basic("prometheus", f"pw{i}"))
        assert len(security._verified) <= webconfig._AUTH_CACHE_SIZE


@settings(max_examples=200, deadline=None)
@given(st.text() | st.sampled_from([
    "basic_auth_users:\n  u: x\n", "tls_server_config:\n", "tls_server_config: {cert_file: a, key_file: b}\n",
    "http_server_config: {headers: {a: 1}}\n", "basic_auth_users: [1]\n", "tls_server_config: 5\n",
]))
def test_fuzz_load_web_config(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "web.yml"
        path.write_text(text, encoding="utf-8")
        try:
            assert isinstance(load_web_config(path), WebSecurity)
        except ConfigError as exc:
            assert str(exc).startswith(str(path))


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.none(), st.text(), st.binary().map(lambda b: "Basic " + base64.b64encode(b).decode())))
def test_fuzz_check_authorization(header: str | None) -> None:
    security = WebSecurity(users={"prometheus": HASH.encode()})
    assert security.check_authorization(header) is False
    assert security.is_cached(header) is False
