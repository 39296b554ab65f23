"""A development PKI: CAs, intermediates, server and client certificates, CRLs, PKCS#12.

A small surface over cryptography's builders, for the quick start, the examples and
the tests (which make the bad certificates with it too: expired, not yet valid,
revoked, another CA, serverAuth-only, self-signed, weak key, a chain too deep).
Never for production: keys are written unencrypted.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from janustls.core.materials import PrivateKey

__all__ = ["CA", "Issued", "KeyType", "make_key", "self_signed", "write_dev_pki", "DevPKI", "DevCA", "PKIError"]

KeyType = Literal["ec", "rsa2048", "rsa1024", "dsa"]
Usage = Literal["client", "server", "both", "none", "ocsp"]

_DAY = datetime.timedelta(days=1)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def make_key(kind: KeyType = "ec") -> PrivateKey:
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "rsa2048":
        return rsa.generate_private_key(65537, 2048)
    if kind == "rsa1024":
        return rsa.generate_private_key(65537, 1024)  # noqa: S505  a deliberately weak key, for tests
    if kind == "dsa":
        return dsa.generate_private_key(2048)
    raise ValueError(f"unknown key type {kind!r}")


def _name(cn: str, o: str | None = None, ou: Sequence[str] = (), email: str | None = None) -> x509.Name:
    attrs = []
    if o:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, o))
    for unit in ou:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    if email:
        attrs.append(x509.NameAttribute(NameOID.EMAIL_ADDRESS, email))
    return x509.Name(attrs)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass
class Issued:
    """A certificate with its key and the intermediates a peer needs to verify it."""

    cert: x509.Certificate
    key: PrivateKey
    intermediates: tuple[x509.Certificate, ...] = ()

    @property
    def cert_pem(self) -> bytes:
        return _pem(self.cert)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self.key)

    @property
    def chain_pem(self) -> bytes:
        """The certificate then its intermediates, as a server or client sends them."""
        return b"".join(_pem(c) for c in (self.cert, *self.intermediates))

    def pkcs12(self, password: bytes = b"", name: str | None = None) -> bytes:
        enc = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
        cn = self.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        label = (name or (str(cn[0].value) if cn else "janustls")).encode()
        return pkcs12.serialize_key_and_certificates(label, self.key, self.cert, list(self.intermediates) or None, enc)

    def write(self, directory: Path, name: str, *, p12: bool = False) -> dict[str, Path]:
        """`NAME.pem` (chain), `NAME.key`, and `NAME.p12` when asked."""
        directory.mkdir(parents=True, exist_ok=True)
        paths = {"chain": directory / f"{name}.pem", "key": directory / f"{name}.key"}
        paths["chain"].write_bytes(self.chain_pem)
        paths["key"].write_bytes(self.key_pem)
        paths["key"].chmod(0o600)
        if p12:
            paths["p12"] = directory / f"{name}.p12"
            paths["p12"].write_bytes(self.pkcs12())
        return paths


@dataclass
class CA:
    """A certificate authority that issues certificates, intermediates and CRLs."""

    cert: x509.Certificate
    key: PrivateKey
    parent: CA | None = None
    revoked: list[tuple[int, datetime.datetime]] = field(default_factory=list)

    @classmethod
    def create(
        cls,
        name: str = "janustls Development Root CA",
        *,
        key_type: KeyType = "ec",
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
        organization: str | None = "janustls development",
    ) -> CA:
        key = make_key(key_type)
        subject = _name(name, organization)
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - _DAY)
            .not_valid_after(not_after or now + 3650 * _DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_ca_key_usage(), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, _hash_for(key))
        )
        return cls(cert, key)

    @property
    def cert_pem(self) -> bytes:
        return _pem(self.cert)

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        """This CA and its parents up to (not including) the root: what a leaf's holder sends."""
        out: list[x509.Certificate] = []
        ca: CA | None = self
        while ca is not None and ca.parent is not None:
            out.append(ca.cert)
            ca = ca.parent
        return tuple(out)

    @property
    def root(self) -> CA:
        return self if self.parent is None else self.parent.root

    def _builder(
        self,
        subject: x509.Name,
        public_key: object,
        not_before: datetime.datetime | None,
        not_after: datetime.datetime | None,
        days: int,
    ) -> x509.CertificateBuilder:
        now = _now()
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)  # type: ignore[arg-type]  # a key we generated: never the DH kind the stub also admits
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - _DAY)
            .not_valid_after(not_after or now + days * _DAY)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )

    def intermediate(
        self,
        name: str = "janustls Development Intermediate CA",
        *,
        key_type: KeyType = "ec",
        ocsp_url: str | None = None,
    ) -> CA:
        """`ocsp_url`: the responder named in its Authority Information Access (asked about it)."""
        key = make_key(key_type)
        builder = self._builder(_name(name, "janustls development"), key.public_key(), None, None, 1825)
        if ocsp_url is not None:
            builder = builder.add_extension(_aia(ocsp_url), critical=False)
        cert = (
            builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_ca_key_usage(), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(self.key, _hash_for(self.key))
        )
        return CA(cert, key, parent=self)

    def issue(
        self,
        common_name: str,
        *,
        usage: Usage = "client",
        dns: Iterable[str] = (),
        ips: Iterable[str] = (),
        emails: Iterable[str] = (),
        uris: Iterable[str] = (),
        organization: str | None = None,
        units: Sequence[str] = (),
        email_in_subject: str | None = None,
        key_type: KeyType = "ec",
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
        days: int = 825,
        ocsp_url: str | None = None,
    ) -> Issued:
        """A leaf certificate for a client (clientAuth), a server (serverAuth), both, neither, or
        an OCSP responder this CA delegates to (`ocsp`: OCSPSigning).  `ocsp_url`: the
        responder named in the certificate's Authority Information Access."""
        key = make_key(key_type)
        builder = self._builder(
            _name(common_name, organization, units, email_in_subject), key.public_key(), not_before, not_after, days
        ).add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=isinstance(key, rsa.RSAPrivateKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        ekus = {
            "client": [ExtendedKeyUsageOID.CLIENT_AUTH],
            "server": [ExtendedKeyUsageOID.SERVER_AUTH],
            "both": [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
            "none": [ExtendedKeyUsageOID.CODE_SIGNING],
            "ocsp": [ExtendedKeyUsageOID.OCSP_SIGNING],
        }[usage]
        builder = builder.add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
        if ocsp_url is not None:
            builder = builder.add_extension(_aia(ocsp_url), critical=False)
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        names += [x509.RFC822Name(e) for e in emails]
        names += [x509.UniformResourceIdentifier(u) for u in uris]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, _hash_for(self.key))
        return Issued(cert, key, self.chain)

    def server(self, *hosts: str, common_name: str | None = None, **kwargs: object) -> Issued:
        """A server certificate for host names and IP addresses."""
        hosts = hosts or ("localhost", "127.0.0.1")
        ips = [h for h in hosts if _is_ip(h)]
        dns = [h for h in hosts if not _is_ip(h)]
        return self.issue(common_name or hosts[0], usage="server", dns=dns, ips=ips, **kwargs)  # type: ignore[arg-type]  # issue()'s keywords, passed through

    def revoke(self, issued: Issued | x509.Certificate, when: datetime.datetime | None = None) -> None:
        cert = issued.cert if isinstance(issued, Issued) else issued
        self.revoked.append((cert.serial_number, when or _now() - datetime.timedelta(minutes=1)))

    def crl(
        self,
        *,
        last_update: datetime.datetime | None = None,
        next_update: datetime.datetime | None = None,
        number: int | None = None,
    ) -> x509.CertificateRevocationList:
        """A CRL of every revocation so far; `number` is its CRL number (RFC 5280), when given."""
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(last_update or now - datetime.timedelta(minutes=5))
            .next_update(next_update or now + 30 * _DAY)
        )
        if number is not None:
            builder = builder.add_extension(x509.CRLNumber(number), critical=False)
        for serial, when in self.revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
            )
        return builder.sign(self.key, _hash_for(self.key))

    def crl_pem(self, **kwargs: Any) -> bytes:
        return self.crl(**kwargs).public_bytes(serialization.Encoding.PEM)


def self_signed(common_name: str, *, usage: Usage = "client", key_type: KeyType = "ec") -> Issued:
    """A leaf that signs itself (no CA will trust it)."""
    key = make_key(key_type)
    name = _name(common_name)
    now = _now()
    ekus = [ExtendedKeyUsageOID.CLIENT_AUTH] if usage == "client" else [ExtendedKeyUsageOID.SERVER_AUTH]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _DAY)
        .not_valid_after(now + 365 * _DAY)
        .add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
        .sign(key, _hash_for(key))
    )
    return Issued(cert, key)


def _aia(ocsp_url: str) -> x509.AuthorityInformationAccess:
    return x509.AuthorityInformationAccess(
        [x509.AccessDescription(AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url))]
    )


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _hash_for(key: object) -> hashes.SHA256:
    return hashes.SHA256()


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class DevPKI:
    """Where `write_dev_pki` put everything."""

    directory: Path
    root: Path
    intermediate: Path
    crl: Path
    server_chain: Path
    server_key: Path
    clients: dict[str, dict[str, Path]]


class PKIError(Exception):
    """A development CA operation that cannot be done; the message says why, in one line."""


#: A certificate name becomes a file name: nothing that leaves the directory.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: `janustls pki list` flags certificates expiring within this many days.
EXPIRING_DAYS = 30
_STATE = Path("ca") / "state.json"


def _default_name() -> str:
    """A CA name of its own per PKI, so two development PKIs trusted on one port never share
    a subject (OpenSSL would look up one's CRL under the other's name)."""
    return f"janustls dev {secrets.token_hex(3)}"


def _load_pem_key(path: Path) -> PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    return key  # type: ignore[return-value]  # a key pki.py itself wrote, so one of ours


def _write_key(path: Path, key: PrivateKey) -> None:
    path.write_bytes(_key_pem(key))
    path.chmod(0o600)


@dataclass
class DevCA:
    """A development CA kept in a directory, so `init`, `issue`, `revoke` and `list` compose
    across runs: the root and intermediate with their keys, and `ca/state.json` (the CA's
    name, every certificate issued with its serial, the revocations, the CRL number).

    Layout: ca/root.pem, ca/root.key, ca/root.crl, ca/intermediate.pem, ca/intermediate.key,
    ca/intermediate.crl, ca/state.json, server/chain.pem + server/key.pem, client/NAME.{pem,key,p12}.
    Development only: every key is written unencrypted.
    """

    directory: Path
    root: CA
    inter: CA
    state: dict[str, Any]

    # -- making and opening -------------------------------------------------------------

    @staticmethod
    def exists(directory: Path) -> bool:
        ca = directory / "ca"
        return any((ca / f).exists() for f in ("state.json", "root.pem", "intermediate.pem", "intermediate.key"))

    @classmethod
    def init(
        cls,
        directory: Path,
        name: str | None = None,
        *,
        force: bool = False,
        hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    ) -> DevCA:
        """A new root, intermediate (empty CRLs) and server certificate; an existing CA only with `force`."""
        if cls.exists(directory):
            if not force:
                old = _read_state(directory).get("name", "unnamed")
                raise PKIError(
                    f"{directory} already holds a development CA ({old}); --force replaces it "
                    "(every certificate it issued stops verifying)"
                )
            cls._remove(directory)
        name = (name or _default_name()).strip()
        if not name:
            raise PKIError("the CA name is empty")
        root = CA.create(f"{name} Root CA")
        inter = root.intermediate(f"{name} Intermediate CA")
        ca_dir = directory / "ca"
        ca_dir.mkdir(parents=True, exist_ok=True)
        (ca_dir / "root.pem").write_bytes(root.cert_pem)
        _write_key(ca_dir / "root.key", root.key)
        (ca_dir / "intermediate.pem").write_bytes(inter.cert_pem)
        _write_key(ca_dir / "intermediate.key", inter.key)
        (ca_dir / "root.crl").write_bytes(root.crl_pem(number=1))
        dev = cls(directory, root, inter, {"version": 1, "name": name, "crl_number": 0, "certificates": []})
        dev._write_crl()
        server = inter.server(*hosts)
        paths = server.write(directory / "server", "chain")
        paths["key"].rename(directory / "server" / "key.pem")
        dev._record("server", "server", server.cert, directory / "server" / "chain.pem")
        dev._save()
        return dev

    @classmethod
    def open(cls, directory: Path) -> DevCA:
        """The CA in `directory`; a directory made before the state file existed is adopted."""
        ca_dir = directory / "ca"
        try:
            root_cert = x509.load_pem_x509_certificate((ca_dir / "root.pem").read_bytes())
            root = CA(root_cert, _load_pem_key(ca_dir / "root.key"))
            inter_cert = x509.load_pem_x509_certificate((ca_dir / "intermediate.pem").read_bytes())
            inter = CA(inter_cert, _load_pem_key(ca_dir / "intermediate.key"), parent=root)
        except FileNotFoundError as e:
            raise PKIError(
                f"{directory} holds no development CA (missing {e.filename}); make one with: janustls pki init {directory}"
            ) from None
        except (ValueError, TypeError) as e:
            raise PKIError(f"{directory}: cannot read the CA: {e}") from None
        state = _read_state(directory) or _adopt(directory, inter)
        dev = cls(directory, root, inter, state)
        inter.revoked = [
            (int(c["serial"], 16), datetime.datetime.fromisoformat(c["revoked_at"]))
            for c in state["certificates"]
            if c.get("revoked_at")
        ]
        if not (directory / _STATE).exists():
            dev._save()
        return dev

    @staticmethod
    def _remove(directory: Path) -> None:
        """What `init --force` replaces: the CA files and every certificate the old CA issued."""
        for entry in _read_state(directory).get("certificates", []):
            chain = directory / entry["file"]
            for f in (chain, chain.with_suffix(".key"), chain.with_suffix(".p12")):
                f.unlink(missing_ok=True)
        (directory / "server" / "key.pem").unlink(missing_ok=True)
        for f in (
            "root.pem",
            "root.key",
            "root.crl",
            "intermediate.pem",
            "intermediate.key",
            "intermediate.crl",
            "state.json",
        ):
            (directory / "ca" / f).unlink(missing_ok=True)

    # -- the state ----------------------------------------------------------------------

    @property
    def name(self) -> str:
        return str(self.state.get("name", "unnamed"))

    @property
    def certificates(self) -> list[dict[str, Any]]:
        return list(self.state["certificates"])

    def _record(self, name: str, kind: str, cert: x509.Certificate, chain: Path) -> None:
        self.state["certificates"].append(
            {
                "name": name,
                "kind": kind,
                "serial": format(cert.serial_number, "X"),
                "subject": cert.subject.rfc4514_string(),
                "not_after": cert.not_valid_after_utc.isoformat(),
                "file": str(chain.relative_to(self.directory)),
                "revoked_at": None,
            }
        )

    def _save(self) -> None:
        path = self.directory / _STATE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=2) + "\n")
        tmp.replace(path)

    def _write_crl(self) -> Path:
        """The intermediate's CRL with every revocation so far, under the next CRL number."""
        self.state["crl_number"] = int(self.state.get("crl_number", 0)) + 1
        path = self.directory / "ca" / "intermediate.crl"
        path.write_bytes(self.inter.crl_pem(number=self.state["crl_number"]))
        return path

    def find(self, name: str) -> dict[str, Any] | None:
        """The newest certificate issued under `name`."""
        found = [c for c in self.state["certificates"] if c["name"] == name]
        return found[-1] if found else None

    # -- issuing and revoking -----------------------------------------------------------

    def issue(
        self,
        name: str,
        *,
        emails: Sequence[str] = (),
        dns: Sequence[str] = (),
        uris: Sequence[str] = (),
        days: int = 825,
        p12_password: bytes = b"",
    ) -> dict[str, Path]:
        """A client certificate (clientAuth) written as client/NAME.pem (with the intermediate),
        NAME.key and NAME.p12; a name in use by a certificate not revoked is refused."""
        if not _SAFE_NAME.match(name):
            raise PKIError(f"{name!r} is not a usable name (letters, digits, '.', '_', '-'; 64 at most)")
        if days < 1:
            raise PKIError(f"--days must be 1 or more, not {days}")
        current = self.find(name)
        if current is not None and not current.get("revoked_at"):
            raise PKIError(
                f"{name} is already issued (serial {current['serial']}); revoke it first or choose another name"
            )
        try:
            issued = self.inter.issue(
                name,
                organization="janustls development",
                units=["clients"],
                emails=list(emails) or [f"{name}@example.test"],
                dns=dns,
                uris=uris,
                days=days,
            )
        except ValueError as e:
            raise PKIError(f"cannot issue {name}: {e}") from None
        paths = issued.write(self.directory / "client", name)
        paths["p12"] = self.directory / "client" / f"{name}.p12"
        paths["p12"].write_bytes(issued.pkcs12(p12_password))
        paths["p12"].chmod(0o600)
        self._record(name, "client", issued.cert, paths["chain"])
        self._save()
        return paths

    def revoke(self, name_or_serial: str) -> dict[str, Any]:
        """Revoke by name (the newest certificate of that name) or by serial in hex; the CRL
        is written again with every revocation so far and the next CRL number."""
        entry = self.find(name_or_serial)
        if entry is None:
            text = name_or_serial.strip().lower().removeprefix("0x").replace(":", "")
            try:
                serial = int(text, 16)
            except ValueError:
                raise PKIError(f"{self.directory}: no certificate named {name_or_serial}") from None
            entry = next((c for c in self.state["certificates"] if int(c["serial"], 16) == serial), None)
            if entry is None:
                raise PKIError(f"{self.directory}: no certificate named {name_or_serial} or with serial {serial:X}")
        if entry.get("revoked_at"):
            raise PKIError(
                f"{entry['name']} (serial {entry['serial']}) is already revoked, since {entry['revoked_at']}"
            )
        when = _now() - datetime.timedelta(minutes=1)
        entry["revoked_at"] = when.isoformat()
        self.inter.revoked.append((int(entry["serial"], 16), when))
        self._write_crl()
        self._save()
        return entry

    def listing(self, now: datetime.datetime | None = None) -> list[tuple[dict[str, Any], str]]:
        """Every certificate with its status: revoked (date), expired, expires in N days, valid."""
        now = now or _now()
        rows = []
        for c in self.state["certificates"]:
            left = datetime.datetime.fromisoformat(c["not_after"]) - now
            if c.get("revoked_at"):
                status = f"revoked {c['revoked_at'][:10]}"
            elif left.total_seconds() <= 0:
                status = "expired"
            elif left <= datetime.timedelta(days=EXPIRING_DAYS):
                status = f"expires in {max(left.days, 0)} days"
            else:
                status = "valid"
            rows.append((c, status))
        return rows


def _read_state(directory: Path) -> dict[str, Any]:
    try:
        state = json.loads((directory / _STATE).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise PKIError(f"{directory / _STATE}: unreadable: {e}") from None
    if not isinstance(state, dict) or not isinstance(state.get("certificates"), list):
        raise PKIError(f"{directory / _STATE}: not a janustls CA state file")
    return state


def _adopt(directory: Path, inter: CA) -> dict[str, Any]:
    """The state of a PKI written before state files: its certificates and its CRL's entries."""
    state: dict[str, Any] = {
        "version": 1,
        "name": inter.root.cert.subject.rfc4514_string(),
        "crl_number": 1,
        "certificates": [],
    }
    revoked: dict[int, datetime.datetime] = {}
    try:
        crl = x509.load_pem_x509_crl((directory / "ca" / "intermediate.crl").read_bytes())
        revoked = {r.serial_number: r.revocation_date_utc for r in crl}
        state["crl_number"] = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except (OSError, ValueError, x509.ExtensionNotFound):
        pass
    files = [("server", "server", directory / "server" / "chain.pem")]
    files += [(p.stem, "client", p) for p in sorted((directory / "client").glob("*.pem"))]
    for name, kind, path in files:
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError):
            continue
        if cert.issuer != inter.cert.subject:
            continue
        when = revoked.get(cert.serial_number)
        state["certificates"].append(
            {
                "name": name,
                "kind": kind,
                "serial": format(cert.serial_number, "X"),
                "subject": cert.subject.rfc4514_string(),
                "not_after": cert.not_valid_after_utc.isoformat(),
                "file": str(path.relative_to(directory)),
                "revoked_at": when.isoformat() if when else None,
            }
        )
    return state


def write_dev_pki(
    directory: Path,
    clients: Sequence[str] = ("alice",),
    hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    name: str | None = None,
) -> DevPKI:
    """Root CA, intermediate, a server certificate for `hosts`, and client certificates (PEM and PKCS#12).

    A directory that already holds a CA keeps it: only the clients it lacks are issued,
    so earlier certificates keep verifying.  Layout: see `DevCA`.
    """
    dev = DevCA.open(directory) if DevCA.exists(directory) else DevCA.init(directory, name, hosts=hosts)
    issued: dict[str, dict[str, Path]] = {}
    for client in clients:
        entry = dev.find(client)
        if entry is None or entry.get("revoked_at"):
            issued[client] = dev.issue(client)
        else:
            chain = directory / entry["file"]
            issued[client] = {"chain": chain, "key": chain.with_suffix(".key"), "p12": chain.with_suffix(".p12")}
    return DevPKI(
        directory=directory,
        root=directory / "ca" / "root.pem",
        intermediate=directory / "ca" / "intermediate.pem",
        crl=directory / "ca" / "intermediate.crl",
        server_chain=directory / "server" / "chain.pem",
        server_key=directory / "server" / "key.pem",
        clients=issued,
    )
