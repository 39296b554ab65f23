"""What a janustls port's TLS protocol does per connection, beside Twisted's own.

Every port's TLS protocol reads the client's bytes in `TLSProtocolBase._flushReceiveBIO`
(Twisted's loop, through `_sslio`); only a proxy port, whose client may half-close,
replaces it (a hook asked on every read costs every port).
"""

from __future__ import annotations

from twisted.protocols.tls import TLSMemoryBIOProtocol

from janustls.ports.proxy import ProxyTLSProtocol
from janustls.tls._twisted import TLSProtocolBase
from janustls.tls.protocol import PortTLSProtocol


def test_port_protocol_reads_with_the_plain_loop():
    assert PortTLSProtocol._flushReceiveBIO is TLSProtocolBase._flushReceiveBIO
    assert TLSProtocolBase._flushReceiveBIO is not TLSMemoryBIOProtocol._flushReceiveBIO  # the `_sslio` loop


def test_proxy_protocol_reads_with_the_half_close_loop():
    assert ProxyTLSProtocol._flushReceiveBIO is not TLSProtocolBase._flushReceiveBIO
