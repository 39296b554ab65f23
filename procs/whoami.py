"""A srvsock handler that answers one HTTP request with who the client is (for curl)."""

import json


async def serve(sock):
    request = await sock.readline()
    while True:  # skip the request headers
        line = await sock.readline()
        if line in (b"\r\n", b"\n", b""):
            break
    who = {
        "cn": sock.cert_info("CN"),
        "subject": sock.cert_info("SUBJECT"),
        "issuer": sock.cert_info("ISSUER"),
        "levels": sock.cert_levels(),
        "san_email": sock.cert_info("SAN_EMAIL"),
        "fingerprint": sock.cert_info("FINGERPRINT"),
        "tls_version": sock.tls_version,
        "cipher": sock.cipher,
    }
    text = f"hello {who['cn']}\n" + json.dumps(who, indent=2) + "\n"
    body = text.encode()
    if not request.startswith((b"GET ", b"HEAD ")):
        sock.write(body)
        return
    sock.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n"
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + (body if request.startswith(b"GET ") else b"")
    )
