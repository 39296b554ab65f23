"""Say "hi", then echo lines ("echo:" before each) until the client leaves."""


async def serve(sock):
    sock.write(b"hi\n")
    while True:
        line = await sock.readline()
        if not line:
            return
        sock.write(b"echo:" + line)
