"""Read a line, answer "CN|levels|version|" and the line."""


async def serve(sock):
    line = await sock.readline()
    sock.write(
        b"%s|%d|%s|" % (str(sock.cert_info("CN")).encode(), sock.cert_levels(), sock.tls_version.encode()) + line
    )
