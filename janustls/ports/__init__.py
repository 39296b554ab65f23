"""Thin Twisted adapters, one module per port type."""
