"""A plain WSGI application behind janustls: it reads Apache mod_ssl's variables, unchanged.

The same code runs behind Apache with `SSLOptions +StdEnvVars`; a Flask or Django app
reads `request.environ["SSL_CLIENT_S_DN_CN"]` the same way.
"""


def application(environ, start_response):
    cn = environ.get("SSL_CLIENT_S_DN_CN", "anonymous")
    lines = [
        f"hello {cn}",
        f"verify: {environ.get('SSL_CLIENT_VERIFY')}",
        f"path: {environ.get('SCRIPT_NAME')}|{environ.get('PATH_INFO')}",
    ]
    lines += [
        f"{k}={environ[k]}"
        for k in sorted(environ)
        if k.startswith("SSL_CLIENT_") and not k.startswith("SSL_CLIENT_CERT")
    ]
    body = ("\n".join(lines) + "\n").encode()
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
    return [body]
