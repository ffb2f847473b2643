"""The self-signed facility certificate (gridhub.init):
notebooks and workers trust it, so it must vouch for the facility's names
only, and its key must not be able to vouch for any other host (issue 15)."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from gridhub import init as gridhub_init

NAMES = ["gridhub.example.org", "localhost", "127.0.0.1", "gridhub-tunnel"]


@pytest.fixture(scope="module")
def facility(tmp_path_factory):
    tls = tmp_path_factory.mktemp("tls")
    gridhub_init._self_signed(tls, NAMES)
    return tls / "facility.crt", tls / "facility.key"


def forged(directory: Path, issuer_crt: Path, issuer_key: Path, host: str) -> tuple[Path, Path]:
    """A certificate for ``host`` signed with the facility's key."""
    ca = x509.load_pem_x509_certificate(issuer_crt.read_bytes())
    ca_key = serialization.load_pem_private_key(issuer_key.read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    crt, k = directory / f"{host}.crt", directory / f"{host}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return crt, k


def handshake(cert: Path, key: Path, trusted: Path, host: str) -> None:
    """A TLS server presenting cert/key; a client trusting ``trusted`` connects to ``host``."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)

        def serve():
            conn, _ = lsock.accept()
            try:
                with server.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"ok")
            except (ssl.SSLError, OSError):
                pass

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        client = ssl.create_default_context(cafile=str(trusted))
        with (
            socket.create_connection(lsock.getsockname()) as raw,
            client.wrap_socket(raw, server_hostname=host) as tls,
        ):
            assert tls.recv(2) == b"ok"
        t.join(5)


def test_the_facility_certificate_is_a_leaf_for_the_facility_names(facility):
    crt, _ = facility
    cert = x509.load_pem_x509_certificate(crt.read_bytes())
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert not usage.key_cert_sign
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(str(n.value) for n in sans) == sorted(NAMES)


@pytest.mark.parametrize("host", ["gridhub.example.org", "localhost", "gridhub-tunnel"])
def test_clients_trusting_it_reach_the_facility(facility, host):
    crt, key = facility
    handshake(crt, key, crt, host)


@pytest.mark.parametrize("host", ["pypi.org", "gridhub.example.org"])
def test_its_key_cannot_vouch_for_any_host(facility, tmp_path, host):
    # whoever gets the facility's key (Traefik's) cannot make a certificate
    # that notebooks trusting facility.crt accept: not for another host, not
    # even for the facility's own name
    crt, key = facility
    fcrt, fkey = forged(tmp_path, crt, key, host)
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(fcrt, fkey, crt, host)


def test_a_ca_made_by_an_older_gridhub_init_is_replaced_by_a_leaf(tmp_path):
    init = gridhub_init
    crt, key = tmp_path / "facility.crt", tmp_path / "facility.key"
    init._self_signed(tmp_path, NAMES)
    leaf = crt.read_bytes()
    init._self_signed(tmp_path, NAMES)
    assert crt.read_bytes() == leaf  # generated once
    # what gridhub-init wrote before issue 15: a CA
    old_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, NAMES[0]),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "GridHub self-signed"),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    ca = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(old_key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(old_key, hashes.SHA256())
    )
    crt.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    init._self_signed(tmp_path, NAMES)
    new = x509.load_pem_x509_certificate(crt.read_bytes())
    assert new.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert key.stat().st_mode & 0o777 == 0o600
