"""Say the peer address the port saw (a PROXY header's, when one came) and the client's CN."""


async def serve(sock):
    sock.write(("%s:%d|%s\n" % (sock.peer.host, sock.peer.port, sock.cert_info("CN"))).encode())
