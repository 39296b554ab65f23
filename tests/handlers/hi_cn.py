"""Say "hi" and the client's CN."""


def serve(sock):
    sock.write(("hi %s\n" % sock.cert_info("CN")).encode())
