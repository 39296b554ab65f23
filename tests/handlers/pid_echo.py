"""Say which process serves and who the client is, then echo lines; for telling workers apart."""

import os


async def serve(sock):
    # The CN only with a whole chain up to a root (never the leaf alone): also when resumed.
    who = sock.cert_info("CN") if sock.cert_levels() >= 2 else "levels=%d" % sock.cert_levels()
    sock.write(("%d %s\n" % (os.getpid(), who)).encode())
    while True:
        line = await sock.readline()
        if not line:
            return
        sock.write(b"echo:" + line)
