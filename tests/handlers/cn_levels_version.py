"""Say "CN|levels|version" and return."""


async def serve(sock):
    sock.write(("%s|%d|%s\n" % (sock.cert_info("CN"), sock.cert_levels(), sock.tls_version)).encode())
