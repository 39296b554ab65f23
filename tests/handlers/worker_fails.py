"""Loads in the parent (which validates it), dies with status 7 in every worker."""

import os

if os.environ.get("JANUSTLS_WORKER") is not None:
    raise SystemExit(7)


def serve(sock):
    sock.write(b"hi\n")
