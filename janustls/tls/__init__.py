"""The TLS layer: pyOpenSSL contexts and protocols, mid-connection requests, tickets, private bindings."""
