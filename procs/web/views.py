"""Web handlers for procs/web.ini: a whoami page, an admin page, and the SSLCERTERR handler.

A handler gets the twisted.web request, which answers the connection's certificate calls
(`request.cert_info("CN")`, `request.cert_levels()`, ...), and returns text, bytes, a
dict (sent as JSON), a Deferred or a coroutine.
"""

import html


def whoami(request):
    """Who the client is, as HTML, or as JSON when the Accept header prefers it."""
    who = {
        "cn": request.cert_info("CN"),
        "subject": request.cert_info("SUBJECT"),
        "issuer": request.cert_info("ISSUER"),
        "levels": request.cert_levels(),
        "san_email": request.cert_info("SAN_EMAIL"),
        "fingerprint": request.cert_info("FINGERPRINT"),
        "tls_version": request.tls_version,
    }
    if request.wants_json():
        return who
    rows = "".join(f"<tr><th>{k}</th><td>{html.escape(str(v))}</td></tr>" for k, v in who.items())
    return f"<!DOCTYPE html><title>whoami</title><h1>hello {html.escape(who['cn'] or 'anonymous')}</h1><table>{rows}</table>\n"


def admin(request):
    """Reached only with a certificate (asked for on this path) whose OU is `clients`."""
    return f"<!DOCTYPE html><title>admin</title><h1>admin area</h1><p>signed in as {html.escape(request.cert_info('CN'))}</p>\n"


def certerr(request):
    """SSLCERTERR: a certificate was presented and refused; the typed reason says why."""
    reason = request.refusal.reason
    if request.wants_json():
        return {"error": "certificate refused", "reason": reason.value}
    return (
        "<!DOCTYPE html><title>certificate refused</title><h1>Your certificate was refused</h1>"
        f"<p>{html.escape(reason.description)} ({reason.value}).</p>\n"
    )
