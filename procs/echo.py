"""A srvsock handler: says who you are, echoes lines, and asks for your certificate on `cert`.

Commands: `who` (the certificate the connection has), `cert` (ask for one now:
TLS 1.2 renegotiation or TLS 1.3 post-handshake authentication), `can` (whether this
connection can be asked), `quit`.  Anything else is echoed.
"""

from janustls.errors import CertificateRequestTimeout


def who(sock):
    if not sock.cert_levels():
        return f"no certificate ({sock.tls_version})\n"
    return (
        f"CN={sock.cert_info('CN')} issuer={sock.cert_info('CN', 1)} levels={sock.cert_levels()} ({sock.tls_version})\n"
    )


async def serve(sock):
    sock.write(f"hello: {who(sock)}commands: who, cert, can, quit; anything else is echoed\n".encode())
    while True:
        line = await sock.readline()
        command = line.strip().lower()
        if not line or command == b"quit":
            return
        if command == b"who":
            sock.write(who(sock).encode())
        elif command == b"can":
            ok, why = sock.can_request_certificate()
            sock.write(f"{'yes' if ok else 'no'}: {why}\n".encode())
        elif command == b"cert":
            try:
                cert = await sock.request_certificate()
            except CertificateRequestTimeout:
                sock.write(b"you did not answer the certificate request\n")
                continue
            sock.write((f"thank you: {who(sock)}" if cert is not None else "you sent no certificate\n").encode())
        else:
            sock.write(line)
