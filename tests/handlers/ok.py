"""Say "ok" and return (the connection closes)."""


def serve(sock):
    sock.write(b"ok\n")
