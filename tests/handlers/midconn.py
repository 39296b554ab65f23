"""Greet with CN and levels; on `ask`/`require` request a certificate mid-connection, on `can` say whether it could; echo the rest."""

from janustls.errors import CertificateRequestTimeout


async def serve(sock):
    sock.write(("hello %s %d\n" % (sock.cert_info("CN"), sock.cert_levels())).encode())
    while True:
        line = await sock.readline()
        if not line:
            return
        word = line.strip()
        if word in (b"ask", b"require"):
            try:
                await sock.request_certificate(require=word == b"require")
                sock.write(("got %s %d\n" % (sock.cert_info("CN"), sock.cert_levels())).encode())
            except CertificateRequestTimeout:
                sock.write(b"timeout\n")
        elif word == b"can":
            ok, why = sock.can_request_certificate()
            sock.write(("can %s %s\n" % (ok, why)).encode())
        else:
            sock.write(b"echo " + line)
