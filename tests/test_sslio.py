"""Pins `janustls.tls._sslio`: a connection's memory-BIO traffic in direct OpenSSL calls.

The TLS protocol of every port reads and writes through these functions instead of
pyOpenSSL's `recv`/`bio_read`/`send`/`do_handshake`.  Here a server connection driven only
by `_sslio` talks to a pyOpenSSL client in memory: the outcomes pyOpenSSL reports as
exceptions come back as OpenSSL's numbers, and the rare ones still raise pyOpenSSL's own
exception (a callback's exception among them).  Real sockets: `test_call_budget.py` and
every port test.
"""

from __future__ import annotations

import pytest
from OpenSSL import SSL

from janustls.tls import _sslio


def _contexts(pki, verify=None):
    server_ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    server_ctx.use_certificate_chain_file(str(pki.files["server.pem"]))
    server_ctx.use_privatekey_file(str(pki.files["server.key"]))
    server_ctx.load_verify_locations(str(pki.files["root.ca"]))
    server_ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, verify or (lambda *args: bool(args[-1])))
    client_ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    client_ctx.use_certificate_chain_file(str(pki.cert("alice")))
    client_ctx.use_privatekey_file(str(pki.key("alice")))
    return server_ctx, client_ctx


def _pair(pki, verify=None):
    server_ctx, client_ctx = _contexts(pki, verify)
    server = SSL.Connection(server_ctx, None)
    server.set_accept_state()
    client = SSL.Connection(client_ctx, None)
    client.set_connect_state()
    return server, client


def _client_step(client: SSL.Connection) -> None:
    try:
        client.do_handshake()
    except SSL.WantReadError:
        pass


def _to_server(client: SSL.Connection, server: SSL.Connection) -> bool:
    try:
        data = client.bio_read(1 << 20)
    except SSL.WantReadError:
        return False
    _sslio.feed(server, data)
    return True


def _to_client(server: SSL.Connection, client: SSL.Connection) -> bool:
    data = _sslio.take_output(server)
    if data:
        client.bio_write(data)
    return bool(data)


def _handshake(server: SSL.Connection, client: SSL.Connection) -> list[int]:
    """The server's handshake steps through `_sslio`; returns their error codes until done."""
    errors = []
    for _ in range(10):
        _client_step(client)
        _to_server(client, server)
        result = _sslio.handshake_step(server)
        if result == 1:
            _to_client(server, client)
            _client_step(client)  # the client reads the tickets when it reads data
            return errors
        errors.append(_sslio.error_of(server, result))
        _to_client(server, client)
    raise AssertionError(f"no handshake: {errors}")


def test_pyopenssl_names_used_are_there(pki):
    server, _client = _pair(pki)
    for name in ("_ssl", "_into_ssl", "_from_ssl"):
        assert getattr(server, name) is not None, name
    assert callable(server._raise_ssl_error) and callable(server._handle_bio_errors)


def test_handshake_and_traffic_return_openssl_outcomes_without_exceptions(pki):
    server, client = _pair(pki)
    errors = _handshake(server, client)
    assert errors and set(errors) == {_sslio.WANT_READ}  # waiting for the client's flights
    # Nothing from the client yet: a number, not WantReadError.
    nothing = _sslio.read(server)
    assert isinstance(nothing, int) and nothing <= 0
    assert _sslio.error_of(server, nothing) == _sslio.WANT_READ
    assert _sslio.take_output(server) == b""
    client.send(b"hello")
    assert _to_server(client, server)
    assert _sslio.read(server) == b"hello"
    assert _sslio.write(server, b"world") == 5
    assert _to_client(server, client)
    assert client.recv(100) == b"world"


def test_output_larger_than_one_bio_read_comes_whole(pki):
    server, client = _pair(pki)
    _handshake(server, client)
    payload = bytes(range(256)) * 1024  # 256 KiB: sixteen records, four BIO chunks
    for at in range(0, len(payload), 16384):
        assert _sslio.write(server, payload[at : at + 16384]) == 16384
    wire = _sslio.take_output(server)
    assert len(wire) > len(payload)  # every record's header and tag
    assert _sslio.take_output(server) == b""
    client.bio_write(wire)
    got = b""
    while len(got) < len(payload):
        got += client.recv(1 << 20)
    assert got == payload


def test_application_bytes_larger_than_one_read_come_in_order(pki):
    server, client = _pair(pki)
    _handshake(server, client)
    payload = b"".join(i.to_bytes(4, "big") for i in range(50000))  # 200 KiB
    client.sendall(payload)
    while _to_server(client, server):
        pass
    got = b""
    while True:
        chunk = _sslio.read(server)
        if not isinstance(chunk, bytes):
            assert _sslio.error_of(server, chunk) == _sslio.WANT_READ
            break
        assert len(chunk) <= _sslio.READ_SIZE
        got += chunk
    assert got == payload


def test_close_notify_is_zero_return(pki):
    server, client = _pair(pki)
    _handshake(server, client)
    client.shutdown()
    _to_server(client, server)
    result = _sslio.read(server)
    assert isinstance(result, int)
    assert _sslio.error_of(server, result) == _sslio.ZERO_RETURN


def test_garbage_raises_pyopenssls_error(pki):
    server, _client = _pair(pki)
    _sslio.feed(server, b"\x16\x03\x01\x00\x05" + b"\xff" * 5)  # a handshake record that is no ClientHello
    result = _sslio.handshake_step(server)
    assert result != 1
    assert _sslio.error_of(server, result) not in (_sslio.WANT_READ, _sslio.ZERO_RETURN)
    with pytest.raises(SSL.Error):
        _sslio.raise_for(server, result)


def test_a_callbacks_exception_is_raised_by_raise_for(pki):
    """pyOpenSSL keeps an exception a verify callback raised and raises it after the call;
    `raise_for` is where that happens now."""

    class Broken(Exception):
        pass

    def verify(*args):
        raise Broken("the verify callback failed")

    server, client = _pair(pki, verify)
    for _ in range(10):
        _client_step(client)
        _to_server(client, server)
        result = _sslio.handshake_step(server)
        assert result != 1
        if _sslio.error_of(server, result) != _sslio.WANT_READ:
            with pytest.raises(Broken):
                _sslio.raise_for(server, result)
            return
        _to_client(server, client)
    raise AssertionError("the handshake never reached the client's certificate")


def test_end_of_stream_without_close_notify_is_told_apart(pki):
    """Most clients close TCP without TLS's close_notify: told apart from other errors without
    pyOpenSSL's SysCallError (and the error queue left empty, as pyOpenSSL leaves it)."""
    from cryptography.hazmat.bindings.openssl.binding import Binding

    server, client = _pair(pki)
    _handshake(server, client)
    server.bio_shutdown()  # the socket's end of stream, as the TLS protocol passes it on
    result = _sslio.read(server)
    assert isinstance(result, int)
    error = _sslio.error_of(server, result)
    assert _sslio.ended_without_close_notify(error)
    assert Binding.lib.ERR_peek_error() == 0
    # Another failure is not an end of stream.
    other, _client = _pair(pki)
    _sslio.feed(other, b"\x16\x03\x01\x00\x05" + b"\xff" * 5)
    failed = _sslio.handshake_step(other)
    assert not _sslio.ended_without_close_notify(_sslio.error_of(other, failed))
    with pytest.raises(SSL.Error):
        _sslio.raise_for(other, failed)


def test_buffers_other_than_bytes_are_taken(pki):
    """pyOpenSSL's `bio_write` took any buffer; a caller handing the TLS protocol a bytearray or
    a memoryview still gets its bytes through."""
    server, client = _pair(pki)
    _client_step(client)
    hello = client.bio_read(1 << 20)
    _sslio.feed(server, bytearray(hello[:10]))
    _sslio.feed(server, memoryview(hello)[10:])
    result = _sslio.handshake_step(server)
    assert _sslio.error_of(server, result) == _sslio.WANT_READ  # the whole ClientHello arrived
    assert _sslio.take_output(server)  # the server's flight
