"""Read five bytes, answer "ok:" and them."""


async def serve(sock):
    data = await sock.read(5)
    sock.write(b"ok:" + data)
