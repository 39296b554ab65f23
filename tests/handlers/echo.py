"""Echo every byte back until the client leaves."""


async def serve(sock):
    while True:
        data = await sock.read()
        if not data:
            return
        sock.write(data)
