"""Say "hi" and the client's CN, then echo lines ("echo:" before each) until it leaves."""


async def serve(sock):
    """Say who the client is, then echo lines until it leaves."""
    sock.write(("hi %s\n" % sock.cert_info("CN")).encode())
    while True:
        line = await sock.readline()
        if not line:
            return
        sock.write(b"echo:" + line)
