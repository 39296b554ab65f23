"""Pins the private Twisted and twisted.web names janustls uses (`janustls.tls._twisted`).

The module looks its module- and class-level names up when it is imported; the
instance attributes are checked here on live objects.  If a Twisted upgrade renames
one, this file names it.
"""

from __future__ import annotations

from OpenSSL import SSL
from twisted.internet import abstract
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.web import http
from twisted.web.wsgi import WSGIResource
from zope.interface import implementer

from janustls.tls import _twisted
from tests.test_openssl_raw import _pair


def test_module_and_class_names_are_found_at_import():
    assert _twisted.ProducerMembrane.__name__ == "_ProducerMembrane"
    assert _twisted.PullToPush.__name__ == "_PullToPush"
    assert _twisted.WSGIResponse.__name__ == "_WSGIResponse"
    assert issubclass(_twisted.TLSProtocolBase, TLSMemoryBIOProtocol)
    assert len(_twisted.PRIVATE_NAMES) == len(set(_twisted.PRIVATE_NAMES))


def test_a_missing_name_is_reported_by_name():
    class Owner:
        pass

    try:
        _twisted._require(Owner, "_gone")
    except _twisted.TwistedChanged as e:
        assert "_gone" in str(e)
    else:
        raise AssertionError("no TwistedChanged")


def test_tls_protocol_instance_attributes(pki):
    server, _ = _pair(pki)
    factory = TLSMemoryBIOFactory(_ContextCreator(server.get_context()), False, Factory.forProtocol(Protocol))
    tls = factory.buildProtocol(None)
    tls.makeConnection(StringTransport())
    for name in _twisted.TLS_INSTANCE_ATTRIBUTES:
        assert hasattr(tls, name), name
    assert tls.getHandle() is tls._tlsConnection  # `TLSProtocolBase` reads the handle through the public getHandle


@implementer(IOpenSSLServerConnectionCreator)
class _ContextCreator:
    def __init__(self, context):
        self.context = context

    def serverConnectionForTLS(self, protocol):
        return SSL.Connection(self.context, None)


def test_channel_attributes_hold_the_request_line():
    channel = http.HTTPChannel()
    channel.makeConnection(StringTransport())
    channel.dataReceived(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
    for name in _twisted.CHANNEL_ATTRIBUTES:
        assert hasattr(channel, name), name
    assert _twisted.request_line(channel) == (b"POST", b"/upload")


def test_wsgi_resource_attributes():
    resource = WSGIResource(MemoryReactorClock(), None, lambda environ, start: [])
    for name in _twisted.WSGI_RESOURCE_ATTRIBUTES:
        assert hasattr(resource, name), name
    assert _twisted.wsgi_threadpool(resource) is None
    _twisted.set_wsgi_threadpool(resource, "pool")
    assert _twisted.wsgi_threadpool(resource) == "pool"


def test_transport_attributes_count_unsent_bytes():
    descriptor = abstract.FileDescriptor(MemoryReactorClock())
    for name in _twisted.TRANSPORT_ATTRIBUTES:
        assert hasattr(descriptor, name), name


def test_tls_factory_attributes(pki):
    server, _ = _pair(pki)
    factory = TLSMemoryBIOFactory(_ContextCreator(server.get_context()), False, Factory.forProtocol(Protocol))
    # One of them, by Twisted's version: `TLSProtocolBase.makeConnection` takes the first it finds.
    found = [name for name in _twisted.TLS_FACTORY_ATTRIBUTES if callable(getattr(factory, name, None))]
    assert found, _twisted.TLS_FACTORY_ATTRIBUTES
