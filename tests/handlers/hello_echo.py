"""Greet with CN, certificate levels and TLS version, then echo lines until `quit`."""


async def serve(sock):
    who = sock.cert_info("CN") or "anonymous"
    sock.write(f"hello {who} ({sock.cert_levels()} certificate levels, {sock.tls_version})\n".encode())
    while True:
        line = await sock.readline()
        if not line or line.strip() == b"quit":
            return
        sock.write(line)
