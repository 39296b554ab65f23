"""The Twisted adapters a client meets: the connection object, one module or package per port type, the endpoints."""
