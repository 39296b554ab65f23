"""The srvsock tests' handlers, one function per behaviour under test."""

from twisted.internet import defer, reactor

from tests.support import hand_over


async def api(sock):
    """readline, read(n), write, then what the end of the stream looks like."""
    line = await sock.readline()
    sock.write(b"line:" + line)
    part = await sock.read(5)
    sock.write(b"read:" + part + b"\n")
    rest = await sock.readline()
    sock.write(b"rest:" + rest)
    tail = await sock.readline()  # the client sends "partial" and closes
    after = await sock.readline()
    eof = await sock.read(10)
    hand_over((tail, after, eof))


def deferred(sock):
    """Not a coroutine: returns a Deferred that fires later; the port closes when it fires."""
    d = defer.Deferred()

    def later():
        sock.write(b"deferred\n")
        d.callback(None)

    reactor.callLater(0.05, later)
    return d


def chained(sock):
    """A Deferred built from sock.readline()."""
    return sock.readline().addCallback(lambda line: sock.write(line.upper()))


def plain(sock):
    """A plain function: writes and returns None, and the connection is closed."""
    sock.write(b"plain\n")


def closer(sock):
    """sock.close() closes the connection while the handler still waits."""
    sock.write(b"bye\n")
    sock.close()
    return defer.Deferred()


async def bulk(sock):
    """Let more than the read high-water mark pile up, then read it all and send it back."""
    header = await sock.readline()
    size = int(header)
    d = defer.Deferred()
    reactor.callLater(0.3, d.callback, None)
    await d
    hand_over(len(sock._buffer))
    got = bytearray()
    while len(got) < size:
        chunk = await sock.read(65536)
        if not chunk:
            break
        got += chunk
    import hashlib

    sock.write(hashlib.sha256(got).hexdigest().encode() + b"\n")
    sock.write(bytes(got))


async def moody(sock):
    """Echoes a line, but raises on "boom"."""
    line = await sock.readline()
    if line == b"boom\n":
        raise ValueError("boom requested")
    sock.write(line)


async def liner(sock):
    sock.write(await sock.readline())


def raiser(sock):
    raise RuntimeError("handler broke at once")


async def http(sock):
    """A minimal HTTP/1.1 answer saying who the client is (like procs/whoami.py), for curl."""
    await sock.readline()  # the request line
    while (await sock.readline()) not in (b"\r\n", b"\n", b""):
        pass
    body = ("hello %s\nlevels %d\n%s\n" % (sock.cert_info("CN"), sock.cert_levels(), sock.tls_version)).encode()
    sock.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        + body
    )


async def mixed(sock):
    """Awaits of every kind in one handler: reads, a later Deferred, a fired one, a failed
    one caught, a read that fails (LineTooLong) caught, and a coroutine of its own."""
    from twisted.internet.task import deferLater

    from janustls.errors import LineTooLong

    out = [await sock.readline()]
    out.append(await deferLater(reactor, 0.01, lambda: b"later\n"))
    out.append(await defer.succeed(b"fired\n"))
    try:
        await defer.fail(KeyError("caught"))
    except KeyError as e:
        out.append(b"failed %s\n" % str(e).encode())

    async def inner():
        return await sock.read(4)

    out.append(await inner() + b"\n")
    try:
        await sock.readline()
    except LineTooLong:
        out.append(b"too long\n")
    sock.write(b"".join(out))


async def exact(sock):
    """readexactly: waits for all n bytes, however they arrive."""
    sock.write(await sock.readexactly(6) + b"|")
    sock.write(await sock.readexactly(6) + b"|")


async def hold(sock):
    """Say ok, then echo lines until the client goes."""
    sock.write(b"ok\n")
    while True:
        line = await sock.readline()
        if not line:
            return
        sock.write(line)
