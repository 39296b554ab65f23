"""Say the client's CN and certificate levels, then wait for one line."""


async def serve(sock):
    sock.write(("%s %d\n" % (sock.cert_info("CN"), sock.cert_levels())).encode())
    await sock.readline()
