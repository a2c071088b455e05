"""A throwaway PKI for TLS tests: a CA, a server certificate for 127.0.0.1/localhost and a client one.

Made with the `openssl` command when it is installed, else with the `cryptography` package when it
is importable; `make_pki` raises `pytest.skip` when neither is available.
"""

from __future__ import annotations

import datetime
import importlib.util
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_client_cert: Path  # signed by a different CA: must be refused
    other_client_key: Path


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    if shutil.which("openssl"):
        _with_openssl(directory)
    elif importlib.util.find_spec("cryptography") is not None:
        _with_cryptography(directory)
    else:
        pytest.skip("TLS tests need the openssl command or the cryptography package; neither is available")
    d = directory
    return Pki(d, d / "ca.crt", d / "ca.key", d / "server.crt", d / "server.key", d / "client.crt", d / "client.key",
               d / "other-client.crt", d / "other-client.key")


def _openssl(directory: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=30)


def _with_openssl(d: Path) -> None:
    (d / "openssl.cnf").write_text(_CONFIG)
    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    for ca in ("ca", "other-ca"):
        _openssl(d, "req", "-config", "openssl.cnf", "-x509", *key, "-keyout", f"{ca}.key", "-out", f"{ca}.crt",
                 "-days", "2", "-subj", f"/CN=gpumon test {ca}", "-extensions", "ca")
    for serial, (name, cn, ext, ca) in enumerate((("server", "127.0.0.1", "server", "ca"),
                                                  ("client", "prometheus", "client", "ca"),
                                                  ("other-client", "intruder", "client", "other-ca")), start=1):
        _openssl(d, "req", "-config", "openssl.cnf", "-new", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={cn}")
        _openssl(d, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
                 "-set_serial", str(serial), "-days", "2", "-out", f"{name}.crt",
                 "-extfile", "openssl.cnf", "-extensions", ext)


def _with_cryptography(d: Path) -> None:  # pragma: no cover - only where openssl is missing
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def write(name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        (d / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (d / f"{name}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))

    def issue(cn: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]
              | None, usage: x509.ObjectIdentifier | None) -> x509.Certificate:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        builder = (x509.CertificateBuilder().subject_name(subject)
                   .issuer_name(issuer[0].subject if issuer else subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=2))
                   .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
        if issuer is not None:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()), critical=False)
        if usage is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if usage == ExtendedKeyUsageOID.SERVER_AUTH:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
        return builder.sign(issuer[1] if issuer else key, hashes.SHA256())

    cas = {}
    for ca in ("ca", "other-ca"):
        key = ec.generate_private_key(ec.SECP256R1())
        cas[ca] = (issue(f"gpumon test {ca}", key, None, None), key)
        write(ca, *cas[ca])
    for name, cn, usage, ca in (("server", "127.0.0.1", ExtendedKeyUsageOID.SERVER_AUTH, "ca"),
                                ("client", "prometheus", ExtendedKeyUsageOID.CLIENT_AUTH, "ca"),
                                ("other-client", "intruder", ExtendedKeyUsageOID.CLIENT_AUTH, "other-ca")):
        key = ec.generate_private_key(ec.SECP256R1())
        write(name, issue(cn, key, cas[ca], usage), key)
