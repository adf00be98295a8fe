"""A node's TLS identity: an X.509 certificate whose key is its Ed25519 node key, and the contexts.

Members of a network run no certificate authority: the network file names their node keys,
and that list is the whole trust. Each node makes its own certificate, ``<data_dir>/node.crt``,
with the node key (``node.key``, 0600, gridchain.identity.keys) as both its subject key and its
signing key. Its subject is ``O=gridchain node, CN=<key hex>`` and its issuer
``O=gridchain member, CN=<key hex>``: the name under which every other member already trusts
that key. For each member key of the network file a node builds, in memory, a trust anchor
named ``O=gridchain member, CN=<key hex>`` holding that key (OpenSSL does not check a trust
anchor's own signature, so a throwaway key signs these). A peer's certificate therefore
verifies, in OpenSSL's ordinary chain check, exactly when it is signed by a member's key —
and TLS 1.3's CertificateVerify proves the peer holds that key's private half. Both sides
present certificates and both check them (``CERT_REQUIRED`` with the anchors as the only
trusted roots, no host names); after the handshake the node checks the key once more itself
(``peer_key``) and the peer protocol checks it against the key its ``hello`` proves.

The profile (docs/security.md): TLS 1.3 only, OpenSSL's TLS 1.3 suites (AES-256-GCM-SHA384,
ChaCha20-Poly1305-SHA256, AES-128-GCM-SHA256) with X25519 key exchange, Ed25519 certificates,
no session tickets (a resumed session would show no certificate to pin). A certificate lives
``CERT_LIFETIME_DAYS`` and is made again, for the same key, when it has less than
``RENEW_BEFORE_DAYS`` left (checked at start and before each TLS context is used), so
renewal needs nobody: peers pin the key, never the certificate.

``session_binding`` is the value both ends put in the handshake proof's binding slot: Python's
ssl has no TLS exporter and ``tls-unique`` is undefined for TLS 1.3, so it is SHA-256 over
both certificates, the dialler's first (docs/security.md says what it binds and what not).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import ssl
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

from gridchain.consensus.errors import GridchainError
from gridchain.identity.keys import KEY_FILE, SigningKey

CERT_FILE = "node.crt"
CERT_LIFETIME_DAYS = 365  # a year: renewal is automatic, so nothing is gained by longer
RENEW_BEFORE_DAYS = 30  # made again with a month left: a node restarted monthly never runs on an old one
# The certificate starts a day before it is made: a peer whose clock is behind ours still takes it.
BACKDATE = datetime.timedelta(days=1)
MAX_CERT_FILE_BYTES = 16 * 1024  # an Ed25519 certificate PEM is ~600 bytes
MEMBER_ORG = "gridchain member"
NODE_ORG = "gridchain node"
BINDING_TAG = b"gridchain/tls-binding/v1"
# Trust anchors: valid for any date, so a member's key never "expires" from the list.
ANCHOR_FROM = datetime.datetime(1970, 1, 2, tzinfo=datetime.timezone.utc)
ANCHOR_UNTIL = datetime.datetime(9999, 12, 31, tzinfo=datetime.timezone.utc)


class TlsError(GridchainError):
    """A TLS identity problem, or a peer certificate that names no usable key (``reason``)."""


def _name(org: str, key: bytes) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                      x509.NameAttribute(NameOID.COMMON_NAME, key.hex())])


def make_certificate(key: SigningKey, now: datetime.datetime) -> x509.Certificate:
    """The node's certificate for ``key``, valid from a day before ``now`` for CERT_LIFETIME_DAYS."""
    private = Ed25519PrivateKey.from_private_bytes(_seed(key))
    builder = (x509.CertificateBuilder()
               .subject_name(_name(NODE_ORG, key.public_key))
               .issuer_name(_name(MEMBER_ORG, key.public_key))
               .public_key(private.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - BACKDATE)
               .not_valid_after(now + datetime.timedelta(days=CERT_LIFETIME_DAYS))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                            crl_sign=False, encipher_only=False, decipher_only=False),
                              critical=True))
    return builder.sign(private, None)


def member_anchors(members: frozenset[bytes] | set[bytes]) -> str:
    """PEM trust anchors, one per member key (``O=gridchain member, CN=<key hex>``)."""
    signer = Ed25519PrivateKey.generate()  # never checked: OpenSSL trusts an anchor as given
    pems = []
    for key in sorted(members):
        cert = (x509.CertificateBuilder()
                .subject_name(_name(MEMBER_ORG, key)).issuer_name(_name(MEMBER_ORG, key))
                .public_key(Ed25519PublicKey.from_public_bytes(key))
                .serial_number(int.from_bytes(hashlib.sha256(key).digest()[:16], "big") >> 1)
                .not_valid_before(ANCHOR_FROM).not_valid_after(ANCHOR_UNTIL)
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .sign(signer, None))
        pems.append(cert.public_bytes(serialization.Encoding.PEM).decode())
    return "".join(pems)


def peer_key(der: bytes | None) -> bytes:
    """The raw Ed25519 key of a peer's certificate (DER); TlsError if there is none."""
    if not der:
        raise TlsError("tls-no-certificate", "the peer presented no certificate")
    try:
        public = x509.load_der_x509_certificate(der).public_key()
    except ValueError as exc:
        raise TlsError("tls-bad-certificate", str(exc)) from None
    if not isinstance(public, Ed25519PublicKey):
        raise TlsError("tls-bad-certificate", f"{type(public).__name__} is not an Ed25519 key")
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def session_binding(dialler_der: bytes, listener_der: bytes) -> bytes:
    """The handshake proof's binding on a TLS link: SHA-256 over both certificates, dialler first."""
    return hashlib.sha256(b"".join((BINDING_TAG, struct.pack(">I", len(dialler_der)), dialler_der,
                                    struct.pack(">I", len(listener_der)), listener_der))).digest()


@dataclass(frozen=True, slots=True)
class TlsLink:
    """What one TLS connection established: the peer's certificate key and the proof binding."""

    peer_key: bytes
    binding: bytes


def _seed(key: SigningKey) -> bytes:
    return key._private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                      serialization.NoEncryption())


def _tls13(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.options |= ssl.OP_NO_TICKET
    return context


class TlsIdentity:
    """A node's certificate in its data dir and the TLS contexts made from it.

    ``members`` None: an open network, whose peer links stay plaintext (only the operator
    API's TLS context exists then).
    """

    def __init__(self, data_dir: Path, key: SigningKey, members: frozenset[bytes] | None,
                 now: datetime.datetime | None = None, key_path: Path | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.key = key
        self.key_path = Path(key_path) if key_path is not None else self.data_dir / KEY_FILE
        self.members = members
        self._anchors = member_anchors(members) if members is not None else ""
        self._contexts: dict[str, ssl.SSLContext] = {}
        self.not_after: datetime.datetime | None = None
        self.cert_der = b""
        self.refresh(now or datetime.datetime.now(datetime.timezone.utc))

    @property
    def cert_path(self) -> Path:
        return self.data_dir / CERT_FILE

    @property
    def peer_tls(self) -> bool:
        return self.members is not None

    def refresh(self, now: datetime.datetime) -> bool:
        """Load the certificate, or make it anew when missing, foreign or near expiry; True if made."""
        cert = self._load()
        made = False
        if cert is None or cert.not_valid_after_utc - now < datetime.timedelta(days=RENEW_BEFORE_DAYS):
            cert = make_certificate(self.key, now)
            _write_atomically(self.cert_path, cert.public_bytes(serialization.Encoding.PEM))
            made = True
        self.cert_der = cert.public_bytes(serialization.Encoding.DER)
        self.not_after = cert.not_valid_after_utc
        self._contexts.clear()
        return made

    def _load(self) -> x509.Certificate | None:
        try:
            with self.cert_path.open("rb") as handle:
                data = handle.read(MAX_CERT_FILE_BYTES + 1)
            cert = x509.load_pem_x509_certificate(data)
        except (OSError, ValueError):
            return None  # missing or damaged: a certificate is cheap to make again
        with contextlib.suppress(TlsError):
            if peer_key(cert.public_bytes(serialization.Encoding.DER)) == self.key.public_key:
                return cert
        return None  # made for another key (the key file was replaced): never use it

    def context(self, kind: str, now: datetime.datetime | None = None) -> ssl.SSLContext:
        """``peer-server``, ``peer-client`` or ``api-server``; renews the certificate when due."""
        now = now or datetime.datetime.now(datetime.timezone.utc)
        if self.not_after is not None and self.not_after - now < datetime.timedelta(days=RENEW_BEFORE_DAYS):
            self.refresh(now)
        context = self._contexts.get(kind)
        if context is None:
            context = self._contexts[kind] = self._make(kind)
        return context

    def _make(self, kind: str) -> ssl.SSLContext:
        if kind == "api-server":
            context = _tls13(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
            context.verify_mode = ssl.CERT_NONE  # operators prove themselves with a token
        elif kind in ("peer-server", "peer-client"):
            if self.members is None:
                raise TlsError("tls-off", "an open network runs plaintext peer links")
            server = kind == "peer-server"
            context = _tls13(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT))
            context.check_hostname = False  # members are keys, not host names
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cadata=self._anchors)
        else:
            raise ValueError(f"unknown TLS context {kind!r}")
        self._load_chain(context)
        return context

    def _load_chain(self, context: ssl.SSLContext) -> None:
        # ssl loads a key only from a file: the node's own key file (0600), never a copy of it.
        context.load_cert_chain(self.cert_path, self.key_path)


def client_context(node_key: bytes | None) -> ssl.SSLContext:
    """An operator client's TLS context: pinned to ``node_key`` when given, else unauthenticated."""
    context = _tls13(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    context.check_hostname = False
    if node_key is None:
        context.verify_mode = ssl.CERT_NONE  # encrypted, but the node is not authenticated
    else:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=member_anchors({node_key}))
    return context


def _write_atomically(path: Path, data: bytes) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)  # a certificate is public
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
