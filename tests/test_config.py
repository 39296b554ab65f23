"""The port-definition file: values read into typed definitions, every mistake located.

Parsing is pure (no files opened); the second half builds ports from definitions
(certificates, keys, handlers read from disk) without listening, to check that file
problems are reported with the same file/section/key and that nothing is built.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from janustls.core.config import (
    ClientCertMode,
    CRLCheck,
    PortType,
    load_definitions,
    parse_definitions,
    port_from_options,
)
from janustls.errors import ConfigError, ConfigErrors
from janustls.ops.build import build_ports

BASE = Path("/srv/janus")


def port(name: str = "SECURE", **keys: str) -> str:
    values = {
        "type": "srvsock",
        "listen": "tcp:0:interface=127.0.0.1",
        "certificate": "server/chain.pem",
        "private_key": "server/key.pem",
        "handler": "echo:serve",
    }
    values.update(keys)
    body = "".join(f"{k} = {v}\n" for k, v in values.items() if v is not None)
    return f"[port:{name}]\n{body}"


def errors(text: str) -> list[ConfigError]:
    with pytest.raises(ConfigErrors) as info:
        parse_definitions(text, source="ports.ini", base=BASE)
    assert all(e.file == "ports.ini" for e in info.value.errors)
    return list(info.value.errors)


def only_error(text: str) -> ConfigError:
    found = errors(text)
    assert len(found) == 1, [str(e) for e in found]
    return found[0]


# -- a good file -------------------------------------------------------------------------------


def test_good_file_gives_typed_definitions():
    """Every documented key read into its type; relative paths resolve in the procedure library."""
    text = """
[janustls]
procs = lib

[port:Secure]
type = srvsock
listen = tcp:8443:interface=127.0.0.1
certificate = server/chain.pem
private_key = server/key.pem
private_key_password_env = SECURE_KEY_PASSWORD
client_cert = require
addca = ca/root-a.pem ca/root-b.pem
crl = ca/root-a.crl
verify_depth = 2
tls_min = 1.2
tls_max = 1.3
ciphers = ECDHE+AESGCM:ECDHE+CHACHA20
max_connections = 100
idle_timeout = 60
handler = echo:serve
proxy_protocol = no

[port:OPEN]
type = srvsock
listen = tcp:8444
certificate = /etc/tls/both.pem   ; the key is in the same file
handler = pkg.mod:obj.method

[addca]
SEC* = ca/partner-root.pem
"""
    d = parse_definitions(text, source="ports.ini", base=BASE)
    assert d.procs == BASE / "lib"
    secure = d.port("secure")
    assert secure.name == "SECURE"
    assert secure.type is PortType.SRVSOCK
    assert secure.listen == "tcp:8443:interface=127.0.0.1"
    assert secure.certificate == BASE / "lib/server/chain.pem"
    assert secure.private_key == BASE / "lib/server/key.pem"
    assert secure.private_key_password_env == "SECURE_KEY_PASSWORD"
    assert secure.client_cert is ClientCertMode.REQUIRE
    assert secure.addca == (BASE / "lib/ca/root-a.pem", BASE / "lib/ca/root-b.pem", BASE / "lib/ca/partner-root.pem")
    assert secure.crl == (BASE / "lib/ca/root-a.crl",)
    assert secure.crl_check is CRLCheck.LEAF
    assert secure.verify_depth == 2
    assert (secure.tls_min, secure.tls_max) == ("1.2", "1.3")
    assert secure.ciphers == "ECDHE+AESGCM:ECDHE+CHACHA20"
    assert secure.max_connections == 100
    assert secure.idle_timeout == 60.0
    assert secure.handler == "echo:serve"
    assert secure.proxy_protocol is False
    assert secure.section == "port:Secure" and secure.source == "ports.ini"
    other = d.port("OPEN")
    assert other.certificate == other.private_key == Path("/etc/tls/both.pem")
    assert other.client_cert is ClientCertMode.NONE
    assert other.addca == ()  # the SEC* pattern does not match OPEN
    assert other.idle_timeout == 0.0 and other.max_connections is None and other.verify_depth is None
    assert other.handler == "pkg.mod:obj.method"


def test_procs_defaults_to_procs_beside_the_file(tmp_path):
    """Without [janustls] procs, the library is ./procs beside the definition file."""
    f = tmp_path / "ports.ini"
    f.write_text(port())
    d = load_definitions(f)
    assert d.procs == tmp_path / "procs"
    assert d.source == str(f)


# -- each mistake, located ------------------------------------------------------------------------


def test_require_without_ca():
    """PORTDEF example: `client_cert = require` with no CA for the port."""
    e = only_error(port(client_cert="require"))
    assert (e.section, e.key) == ("port:SECURE", "client_cert")
    assert "no CA" in e.message


def test_request_without_ca():
    """Requesting a certificate without any CA to verify it against is a mistake too."""
    e = only_error(port(client_cert="request"))
    assert (e.section, e.key) == ("port:SECURE", "client_cert")


def test_addca_pattern_satisfies_require():
    """A CA from an [addca] pattern counts as the port's CA."""
    d = parse_definitions(port(client_cert="require") + "[addca]\nsec* = ca.pem\n", base=BASE)
    assert d.port("SECURE").addca == (BASE / "procs/ca.pem",)


def test_client_cert_on_port_without_certificate():
    """PORTDEF example: `client_cert` on a port without `certificate`."""
    e = only_error(port(certificate=None, private_key=None, client_cert="request", addca="ca.pem"))
    assert (e.section, e.key) == ("port:SECURE", "client_cert")
    assert "without a certificate" in e.message


def test_port_without_certificate():
    """Every port is a TLS port: no certificate is an error on `certificate`."""
    e = only_error(port(certificate=None, private_key=None))
    assert (e.section, e.key) == ("port:SECURE", "certificate")


def test_unknown_type():
    """PORTDEF example: an unknown `type`, with the allowed values in the message."""
    e = only_error(port(type="websocket"))
    assert (e.section, e.key) == ("port:SECURE", "type")
    assert "'websocket'" in e.message and "srvsock" in e.message


def test_two_ports_on_one_address():
    """PORTDEF example: two ports on one address, blamed on the second and naming the first."""
    text = port("A", listen="tcp:8443:interface=127.0.0.1") + port("B", listen="tcp:8443:interface=127.0.0.1")
    e = only_error(text)
    assert (e.section, e.key) == ("port:B", "listen")
    assert "port:A" in e.message


def test_wildcard_interface_clashes_with_any():
    """A port on every interface clashes with one on a single interface of the same port."""
    text = port("A", listen="tcp:8443") + port("B", listen="tcp:port=8443:interface=127.0.0.1")
    assert only_error(text).key == "listen"


def test_different_addresses_do_not_clash():
    """Other interfaces, and port 0 (a free port each time), are not clashes."""
    text = port("A", listen="tcp:8443:interface=127.0.0.1") + port("B", listen="tcp:8443:interface=127.0.0.2")
    text += port("C", listen="tcp:0") + port("D", listen="tcp:0")
    assert len(parse_definitions(text, base=BASE).ports) == 4


def test_unknown_key():
    """A misspelt key is an error, not silently ignored."""
    e = only_error(port(client_certificate="require"))
    assert (e.section, e.key) == ("port:SECURE", "client_certificate")
    assert "not a port key" in e.message


@pytest.mark.parametrize(
    "key,value",
    [
        ("max_connections", "many"),
        ("max_connections", "0"),
        ("max_connections", "2.5"),
        ("idle_timeout", "-1"),
        ("idle_timeout", "soon"),
        ("idle_timeout", "nan"),
        ("verify_depth", "0"),
        ("verify_depth", "101"),
        ("handshake_timeout", "0"),
        ("max_cert_size", "100"),
        ("request_timeout", "x"),
    ],
)
def test_bad_numbers(key, value):
    """Numbers out of range or not numbers at all, each blamed on its key."""
    found = [e for e in errors(port(**{key: value})) if e.key == key]
    assert len(found) == 1
    assert found[0].section == "port:SECURE"
    assert value in found[0].message


@pytest.mark.parametrize("key,value", [("tls_min", "1.0"), ("tls_max", "1.1"), ("tls_min", "TLSv1.3")])
def test_unknown_tls_version(key, value):
    """Only TLS 1.2 and 1.3 exist for janustls."""
    e = only_error(port(**{key: value}))
    assert e.key == key and "1.2 or 1.3" in e.message


def test_tls_min_above_tls_max():
    """tls_min above tls_max leaves no version: an error on tls_max."""
    e = only_error(port(tls_min="1.3", tls_max="1.2"))
    assert (e.section, e.key) == ("port:SECURE", "tls_max")
    assert "tls_min" in e.message


@pytest.mark.parametrize("key,value", [("client_cert", "always"), ("crl_check", "all"), ("proxy_protocol", "maybe")])
def test_bad_choices(key, value):
    """Enumerated keys list what they accept."""
    e = only_error(port(**{key: value}))
    assert e.key == key and repr(value) in e.message


def test_bad_handler_reference():
    """A handler is MODULE:CALLABLE, not a file name."""
    e = only_error(port(handler="echo.py"))
    assert e.key == "handler" and "MODULE:CALLABLE" in e.message


def test_srvsock_without_handler():
    """A srvsock port without a handler would have nothing to run."""
    assert only_error(port(handler=None)).key == "handler"


def test_proxy_key_on_srvsock_port():
    """Keys of another port type are errors, not ignored."""
    e = only_error(port(connect="tcp:backend:5050"))
    assert e.key == "connect" and "proxy" in e.message


def test_empty_value():
    """`key =` with no value is an error on that key."""
    assert only_error(port(ciphers="")).key == "ciphers"


def test_addca_pattern_matching_no_port():
    """An [addca] pattern that matches no port is most likely a typo."""
    e = only_error(port() + "[addca]\nGATE* = ca/partner.pem\n")
    assert (e.section, e.key) == ("addca", "GATE*")
    assert "matches no port" in e.message


def test_web_rules_for_a_srvsock_port():
    """A [web:X] table for a port that is not webserv."""
    e = only_error(port() + "[web:SECURE]\nON /x = page x.html\n")
    assert e.section == "web:SECURE" and "not webserv" in e.message


def test_web_rules_for_an_undefined_port():
    """A [web:X] table for no port at all."""
    e = only_error(port() + "[web:NOWHERE]\nON /x = page x.html\n")
    assert e.section == "web:NOWHERE" and "not defined" in e.message


def test_duplicate_section():
    """A section defined twice (configparser's strict mode), located."""
    e = only_error(port() + port())
    assert e.section == "port:SECURE" and "twice" in e.message


def test_same_port_name_in_another_case():
    """Port names ignore case, so SECURE and secure are the same port."""
    e = only_error(port("secure", listen="tcp:1") + port("SECURE", listen="tcp:2"))
    assert "same port" in e.message


def test_duplicate_key():
    """A key set twice in one section, located."""
    e = only_error(port() + "handler = other:serve\n")
    assert (e.section, e.key) == ("port:SECURE", "handler")
    assert "twice" in e.message


def test_bad_port_name():
    """Port names are letters, digits, _ and - (as Janus port names)."""
    assert "port name" in only_error(port("SE CURE!")).message


def test_unknown_section_and_janustls_key():
    """Unknown sections and unknown [janustls] keys are errors too."""
    found = errors("[janustls]\nprocz = x\n[ports]\na = b\n" + port())
    assert {(e.section, e.key) for e in found} == {("janustls", "procz"), ("ports", None)}


def test_no_port():
    """A file without any port would start nothing: an error, not a silent success."""
    assert "no port" in only_error("[janustls]\nprocs = x\n").message


def test_key_before_section():
    """A key before any section header cannot be placed: a located parse error."""
    e = only_error("type = srvsock\n" + port())
    assert e.section is None and "before any" in e.message


def test_every_error_is_reported_at_once():
    """`janustls check` shows every mistake in one run, not the first only."""
    text = port("A", type="nope", tls_min="1.3", tls_max="1.2", max_connections="x") + port("B", client_cert="require")
    found = errors(text)
    assert {(e.section, e.key) for e in found} == {
        ("port:A", "type"), ("port:A", "tls_max"), ("port:A", "max_connections"), ("port:B", "client_cert"),
    }  # fmt: skip


def test_error_text_names_file_section_and_key():
    """The text form an operator reads: file, [section], key, then the cause."""
    e = only_error(port(client_cert="require"))
    assert str(e).startswith("ports.ini: [port:SECURE] client_cert: ")


def test_unreadable_file(tmp_path):
    """A definition file that cannot be read names itself."""
    with pytest.raises(ConfigErrors) as info:
        load_definitions(tmp_path / "missing.ini")
    assert "missing.ini" in str(info.value) and "cannot be read" in str(info.value)


def test_port_from_options_embedded():
    """The endpoint plugin's form: listen, type and handler may be left out."""
    p = port_from_options(
        "ep", {"certificate": "c.pem", "client_cert": "require", "addca": "ca.pem"}, procs=BASE, embedded=True
    )
    assert p.name == "EP" and p.type is PortType.SRVSOCK and p.addca == (BASE / "ca.pem",)
    with pytest.raises(ConfigErrors) as info:
        port_from_options("ep", {"certificate": "c.pem", "client_cert": "require"}, procs=BASE, embedded=True)
    assert info.value.errors[0].key == "client_cert"


# -- file problems, found when ports are built (nothing listens) --------------------------------------


@pytest.fixture
def lib(pki, tmp_path):
    """A procedure library with a handler and the test PKI's server material."""
    d = tmp_path / "lib"
    d.mkdir()
    (d / "echo.py").write_text("async def serve(sock):\n    pass\n")
    return d


def build_errors(lib: Path, section: str) -> list[ConfigError]:
    definitions = parse_definitions(f"[janustls]\nprocs = {lib}\n{section}", source="ports.ini", base=lib)
    with pytest.raises(ConfigErrors) as info:
        build_ports(definitions)
    return list(info.value.errors)


def server_port(pki, **keys: str) -> str:
    values = {"certificate": str(pki.files["server.pem"]), "private_key": str(pki.files["server.key"])}
    values.update(keys)
    return port(**values)


def test_good_material_builds(pki, lib, reactor):
    """The test PKI's server material builds a port: the failures below are the files' fault."""
    definitions = parse_definitions(
        f"[janustls]\nprocs = {lib}\n" + server_port(pki, client_cert="require", addca=str(pki.files["root.ca"])),
        base=lib,
    )
    built = build_ports(definitions, reactor)
    assert [b.definition.name for b in built] == ["SECURE"]
    assert built[0].runtime.tls.trust.cas == (pki.root.cert,)


def test_missing_pem(pki, lib):
    """PORTDEF example: a missing PEM, blamed on `certificate`."""
    [e] = build_errors(lib, server_port(pki, certificate="server/none.pem"))
    assert (e.file, e.section, e.key) == ("ports.ini", "port:SECURE", "certificate")
    assert "none.pem does not exist" in e.message


def test_unreadable_pem(pki, lib):
    """PORTDEF example: an unreadable PEM (garbage, a directory)."""
    (lib / "garbage.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    (lib / "dir.pem").mkdir()
    [e] = build_errors(lib, server_port(pki, certificate="garbage.pem"))
    assert e.key == "certificate" and "not a valid certificate" in e.message
    [e] = build_errors(lib, server_port(pki, certificate="dir.pem"))
    assert e.key == "certificate" and "directory" in e.message


def test_missing_key(pki, lib):
    """A missing key file, blamed on `private_key`."""
    [e] = build_errors(lib, server_port(pki, private_key="nokey.pem"))
    assert e.key == "private_key" and "does not exist" in e.message


def test_key_not_matching_certificate(pki, lib):
    """PORTDEF example: a key that does not match the certificate."""
    [e] = build_errors(lib, server_port(pki, private_key=str(pki.key("alice"))))
    assert (e.section, e.key) == ("port:SECURE", "private_key")
    assert "does not match" in e.message


def _write_server(lib: Path, name: str, issued) -> tuple[str, str]:
    (lib / f"{name}.pem").write_bytes(issued.chain_pem)
    (lib / f"{name}.key").write_bytes(issued.key_pem)
    return f"{name}.pem", f"{name}.key"


def test_expired_server_certificate(pki, lib):
    """PORTDEF example: an expired server certificate is refused at start, not at the first handshake."""
    now = datetime.datetime.now(datetime.UTC)
    cert, key = _write_server(
        lib,
        "old",
        pki.inter.server(
            "localhost", not_before=now - datetime.timedelta(days=30), not_after=now - datetime.timedelta(days=1)
        ),
    )
    [e] = build_errors(lib, port(certificate=cert, private_key=key))
    assert (e.section, e.key) == ("port:SECURE", "certificate")
    assert "expired" in e.message


def test_not_yet_valid_server_certificate(pki, lib):
    """A server certificate that is not valid yet is refused at start."""
    now = datetime.datetime.now(datetime.UTC)
    cert, key = _write_server(lib, "future", pki.inter.server("localhost", not_before=now + datetime.timedelta(days=1)))
    [e] = build_errors(lib, port(certificate=cert, private_key=key))
    assert e.key == "certificate" and "not valid until" in e.message


def test_bad_cipher_string(pki, lib):
    """A cipher string OpenSSL cannot use is an error on `ciphers`."""
    [e] = build_errors(lib, server_port(pki, ciphers="NOSUCHCIPHER"))
    assert (e.section, e.key) == ("port:SECURE", "ciphers")


def test_handler_module_missing(pki, lib):
    """A handler whose module is not in the procedure library."""
    [e] = build_errors(lib, server_port(pki, handler="nothere:serve"))
    assert (e.section, e.key) == ("port:SECURE", "handler")
    assert "nothere.py does not exist" in e.message


def test_handler_attribute_missing(pki, lib):
    """A handler module without the named callable."""
    [e] = build_errors(lib, server_port(pki, handler="echo:nothere"))
    assert e.key == "handler" and "'nothere'" in e.message


def test_handler_module_that_fails_to_import(pki, lib):
    """A handler module that raises on import is reported, not a crash."""
    (lib / "broken.py").write_text("import no_such_module_at_all\n")
    [e] = build_errors(lib, server_port(pki, handler="broken:serve"))
    assert e.key == "handler" and "no_such_module_at_all" in e.message


def test_missing_and_non_ca_addca_and_crl(pki, lib):
    """CA and CRL files: missing, or a leaf given as a CA, each located."""
    found = build_errors(
        lib, server_port(pki, client_cert="require", addca=f"nope.pem {pki.cert('bob')}", crl="nope.crl")
    )
    keys = sorted((e.key, e.message) for e in found)
    assert [k for k, _ in keys] == ["addca", "addca", "crl"]
    assert any("not a CA certificate" in m for _, m in keys)


def _encrypted_key(pki, lib: Path, password: bytes) -> str:
    key = pki.issued["server"].key
    (lib / "enc.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(password),
        )
    )
    return str(lib / "enc.key")


def test_encrypted_key_without_password_env(pki, lib):
    """An encrypted key without private_key_password_env says how to give its password."""
    [e] = build_errors(lib, server_port(pki, private_key=_encrypted_key(pki, lib, b"s3cret")))
    assert e.key == "private_key" and "private_key_password_env" in e.message


def test_encrypted_key_with_unset_password_env(pki, lib, monkeypatch):
    """The named environment variable is not set."""
    monkeypatch.delenv("JANUSTLS_TEST_PW", raising=False)
    [e] = build_errors(
        lib,
        server_port(pki, private_key=_encrypted_key(pki, lib, b"s3cret"), private_key_password_env="JANUSTLS_TEST_PW"),
    )
    assert e.key == "private_key_password_env" and "JANUSTLS_TEST_PW" in e.message


def test_encrypted_key_with_wrong_password(pki, lib, monkeypatch):
    """The password does not decrypt the key."""
    monkeypatch.setenv("JANUSTLS_TEST_PW", "wrong")
    [e] = build_errors(
        lib,
        server_port(pki, private_key=_encrypted_key(pki, lib, b"s3cret"), private_key_password_env="JANUSTLS_TEST_PW"),
    )
    assert e.key == "private_key" and "wrong password" in e.message


def test_errors_of_all_ports_reported_and_nothing_built(pki, lib):
    """One bad port among good ones: build_ports raises, listing each port's problems."""
    text = server_port(pki).replace("[port:SECURE]", "[port:GOOD]")
    text += port("BAD1", certificate="missing.pem") + server_port(pki, handler="nothere:serve").replace(
        "[port:SECURE]", "[port:BAD2]"
    )
    found = build_errors(lib, text)
    assert {(e.section, e.key) for e in found} == {("port:BAD1", "certificate"), ("port:BAD2", "handler")}
