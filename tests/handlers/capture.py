"""Hand the connection to the test (tests.support.hand_over), say ok, return."""

from tests.support import hand_over


def serve(sock):
    """A plain function (no coroutine): hand the connection over, say ok, return (closes)."""
    hand_over(sock)
    sock.write(b"ok\n")
