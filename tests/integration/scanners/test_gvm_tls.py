"""GvmHook over TLS (gvmd's port 9390 set-up): the manager's certificate must be verified.

python-gvm's own TLSConnection uses CERT_NONE unless a client certificate, key
and CA are all given; the hook replaces that socket set-up with a verifying one.
The GMP double serves real TLS here with a throw-away CA made by `cryptography`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from selfheal.scanners.errors import ScannerTransientError
from selfheal.scanners.gvm import GvmHook, GvmHookError
from tests.doubles.gmp_double import GmpDouble


def _issue(
    tmp: Path, name: str, sans: list[x509.GeneralName], issuer=None
) -> tuple[Path, Path, object, object]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    else:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    cert_path, key_path = tmp / f"{name}.pem", tmp / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path, cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("pki")
    ca_pem, _, ca_cert, ca_key = _issue(tmp, "ca", [])
    srv_pem, srv_key, _, _ = _issue(
        tmp,
        "gvmd",
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        issuer=(ca_cert, ca_key),
    )
    other_pem, _, _, _ = _issue(tmp, "other-ca", [])
    return {"ca": ca_pem, "cert": srv_pem, "key": srv_key, "other_ca": other_pem}


@pytest.fixture
def gmp_tls(pki: dict[str, Path]) -> Iterator[GmpDouble]:
    double = GmpDouble(tls=(pki["cert"], pki["key"]), scan_seconds=0.3)
    yield double
    double.close()


def _conn(airflow_conn, gmp: GmpDouble, host: str = "127.0.0.1", **extra: object) -> str:
    return airflow_conn(
        "gvm",
        host=host,
        port=gmp.port,
        login=gmp.username,
        password=gmp.password,
        extra={"timeout": 5, **extra},
    )


def test_verified_tls_session(gmp_tls, pki, airflow_conn):
    hook = GvmHook(_conn(airflow_conn, gmp_tls, cafile=str(pki["ca"])))
    assert hook.test_connection() == (True, f"GMP 22.6 at tls:127.0.0.1:{gmp_tls.port}")
    assert hook.address.startswith("tls:")
    scan = hook.start_scan("svc", ["127.0.0.1"])
    assert hook.task_status(scan.task_id).status in ("Requested", "Running", "Done")
    assert "authenticate" in gmp_tls.commands


def test_localhost_name_matches_the_certificate_too(gmp_tls, pki, airflow_conn):
    assert GvmHook(_conn(airflow_conn, gmp_tls, host="localhost", cafile=str(pki["ca"]))).version() == "22.6"


@pytest.mark.parametrize("ca", [None, "other_ca"], ids=["system-store", "wrong-ca"])
def test_untrusted_certificate_is_refused_before_the_password_is_sent(gmp_tls, pki, airflow_conn, ca):
    extra = {"cafile": str(pki[ca])} if ca else {}
    hook = GvmHook(_conn(airflow_conn, gmp_tls, **extra))
    with pytest.raises(GvmHookError, match="TLS certificate is not trusted") as err:
        hook.version()
    assert not isinstance(err.value, ScannerTransientError)  # waiting will not make the certificate valid
    assert "authenticate" not in gmp_tls.commands


def test_explicit_opt_out_of_verification(gmp_tls, airflow_conn):
    assert GvmHook(_conn(airflow_conn, gmp_tls, verify=False)).version() == "22.6"


def test_refused_port_is_transient(gmp_tls, pki, airflow_conn):
    conn_id = _conn(airflow_conn, gmp_tls, cafile=str(pki["ca"]))
    gmp_tls.stop()
    with pytest.raises(ScannerTransientError, match="ConnectionRefusedError"):
        GvmHook(conn_id).version()
