"""The pure core: port definitions, rules, identity, reasons, certificate facts, trust checks and parsers.

No reactor, no OpenSSL handles, no sockets: imports only `janustls.errors` and itself.
"""
