"""The pure parts of web ports, without I/O: the rule table (janustls.core.rules) and identity rules (janustls.core.identity)."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives import hashes, serialization

from janustls.core.config import WebRuleLine as L
from janustls.core.config import parse_definitions
from janustls.core.identity import PolicyError, Subject, parse_policy
from janustls.core.reasons import Reason
from janustls.core.rules import Action, Exc, Kind, build_table
from janustls.errors import ConfigErrors


def table(*lines: tuple[str, str], resolve=None):
    return build_table([L(k, v) for k, v in lines], source="ports.ini", section="web:W", resolve=resolve)


def action_of(t, path, method="GET"):
    r = t.resolve(method, path)
    return (r.action.key if r.action else None), r.parts


# -- rule types ---------------------------------------------------------------------------------------


def test_rule_types_parse():
    t = table(
        ("ON /app/*", "call views:dispatch"),
        ("ON /hello", "page pages/hello.html"),
        ("TYPE /static/*.css", "text/css"),
        ("REDIRECT /old/*", "https://example.org/new/*"),
        ("ALLOW /admin/*", "ou:ops"),
        ("DISALLOW /private/*", ""),
        ("ON /admin/*", "call views:admin client_cert=require"),
        ("ON /flask/*", "wsgi app:application"),
        ("ON SSLNOCERTERR", "page pages/nocert.html status=403"),
    )
    kinds = [r.kind for r in t.rules]
    assert kinds == [Kind.ON, Kind.ON, Kind.TYPE, Kind.REDIRECT, Kind.ALLOW, Kind.DISALLOW, Kind.ON, Kind.ON]
    assert t.rules[0].action is Action.CALL and t.rules[1].action is Action.PAGE
    assert t.rules[3].action is Action.REDIRECT and t.rules[7].action is Action.WSGI
    assert t.rules[6].client_cert == "require"
    nocert = t.exception(Exc.SSLNOCERTERR)
    assert nocert is not None and nocert.status == 403 and nocert.target == "pages/nocert.html"
    assert t.resolve("GET", "/static/a/b.css").content_type == "text/css"
    assert t.resolve("GET", "/private/x").access.kind is Kind.DISALLOW


def test_wildcard_substitution():
    t = table(("REDIRECT /old/*/x/*", "https://example.org/new/*/y/*"), ("ON /docs/*", "page pages/*.html"))
    r = t.resolve("GET", "/old/a/b/x/c")
    assert r.parts == ("a/b", "c")
    assert r.action.substitute(r.parts) == "https://example.org/new/a/b/y/c"
    r = t.resolve("GET", "/docs/intro")
    assert r.action.substitute(r.parts) == "pages/intro.html"


def test_methods_and_head():
    t = table(("ON GET,POST /form", "call v:form"), ("ON PUT /form", "call v:put"))
    assert action_of(t, "/form", "POST")[0] == "ON GET,POST /form"
    assert action_of(t, "/form", "HEAD")[0] == "ON GET,POST /form"  # GET answers HEAD
    assert action_of(t, "/form", "PUT")[0] == "ON PUT /form"
    assert action_of(t, "/form", "DELETE")[0] is None


# -- precedence ---------------------------------------------------------------------------------------


def test_precedence_more_literal_characters_win():
    t = table(("ON /*", "call v:root"), ("ON /app/*", "call v:app"), ("ON /app/admin/*", "call v:admin"))
    assert action_of(t, "/x")[0] == "ON /*"
    assert action_of(t, "/app/x")[0] == "ON /app/*"
    assert action_of(t, "/app/admin/x")[0] == "ON /app/admin/*"


def test_precedence_exact_over_wildcard():
    t = table(("ON /a*", "call v:wild"), ("ON /a", "call v:exact"))
    assert action_of(t, "/a")[0] == "ON /a"
    assert action_of(t, "/ab")[0] == "ON /a*"


def test_precedence_method_over_any_method():
    t = table(("ON /api/*", "call v:any"), ("ON POST /api/*", "call v:post"))
    assert action_of(t, "/api/x", "POST")[0] == "ON POST /api/*"
    assert action_of(t, "/api/x", "GET")[0] == "ON /api/*"


def test_precedence_url_specificity_before_method():
    t = table(("ON POST /api/*", "call v:post"), ("ON /api/users", "call v:users"))
    assert action_of(t, "/api/users", "POST")[0] == "ON /api/users"


def test_precedence_tie_earlier_line_wins():
    t = table(("ON /a/*.css", "call v:first"), ("REDIRECT /a/x.cs*", "https://example.org/"))
    assert action_of(t, "/a/x.css")[0] == "ON /a/*.css"
    t = table(("REDIRECT /a/x.cs*", "https://example.org/"), ("ON /a/*.css", "call v:first"))
    assert action_of(t, "/a/x.css")[0] == "REDIRECT /a/x.cs*"


def test_precedence_redirect_and_on_compete():
    t = table(("ON /old/*", "call v:x"), ("REDIRECT /old/kept/*", "https://example.org/*"))
    assert action_of(t, "/old/kept/1")[0] == "REDIRECT /old/kept/*"
    assert action_of(t, "/old/other")[0] == "ON /old/*"


def test_precedence_access_most_specific_and_disallow_on_tie():
    t = table(
        ("ON /*", "call v:x"),
        ("DISALLOW /admin/*", ""),
        ("ALLOW /admin/public/*", "anyone"),
        ("ALLOW /tie/*", "cn:alice"),
        ("DISALLOW /tie/*", "cn:bob"),
    )
    assert t.resolve("GET", "/admin/x").access.kind is Kind.DISALLOW
    assert t.resolve("GET", "/admin/public/x").access.kind is Kind.ALLOW
    assert t.resolve("GET", "/tie/x").access.kind is Kind.DISALLOW
    assert t.resolve("GET", "/other").access is None


def test_exceptions_never_match_urls():
    t = table(("ON /*", "call v:all"), ("ON SSLNOCERTERR", "page nocert.html"))
    assert action_of(t, "/SSLNOCERTERR")[0] == "ON /*"  # a URL; the exception rule is apart
    assert all(r.exception is None for r in t.rules)
    assert t.exception(Exc.SSLNOCERTERR).key == "ON SSLNOCERTERR"
    assert t.exception(Exc.FORBIDDEN) is None


def test_exception_type_rule():
    t = table(("ON FORBIDDEN", "page forbidden.txt status=403"), ("TYPE FORBIDDEN", "text/plain"))
    assert t.exception(Exc.FORBIDDEN).content_type == "text/plain"


def test_resolution_is_cached():
    t = table(("ON /a/*", "call v:x"))
    assert t.resolve("GET", "/a/b") is t.resolve("GET", "/a/b")


# -- configuration errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key,value,fragment",
    [
        ("ON GET SSLNOCERTERR", "page x.html", "exception rule with a method"),
        ("ON SSLNOCERT*", "page x.html", "wildcard"),
        ("ON NOSUCHERR", "page x.html", "expected a path starting with /"),
        ("ALLOW SSLNOCERTERR", "cn:alice", "exception rules are ON, TYPE or REDIRECT"),
        ("FETCH /x", "page x.html", "expected ON, TYPE, REDIRECT, ALLOW or DISALLOW"),
        ("ON get/ /x", "page x.html", "HTTP methods"),
        ("ON /x", "serve x.html", "expected call, page, redirect, wsgi, asgi or forward"),
        ("ON /x", "call notaref", "MODULE:CALLABLE"),
        ("ON /x", "page x.html status=999", "HTTP status"),
        ("ON /x", "page x.html client_cert=maybe", "require or request"),
        ("ON /x", "page x.html colour=blue", "options are"),
        ("ON /x", "page x.html fallback=https://e.org/", "fallback= without client_cert="),
        ("ON /x", "page ../etc/passwd", "inside the procedure library"),
        ("ON /x", "page a.html allow='cn:'", "identity expression"),
        ("ON /x", "page *.html", "no wildcard"),
        ("ON /x/*", "call v:*", "substitution works in page and redirect"),
        ("REDIRECT /x", "https://e.org/ status=200", "301, 302, 303, 307, 308"),
        ("TYPE /x", "not a type", "content type"),
        ("ALLOW /x", "", "needs an identity expression"),
        ("DISALLOW /x", "bogus:thing", "not a kind of identity term"),
        ("ON SSLPROTOCOLERR", "page x.html", "only call"),
        ("ON SSLNOCERTERR", "page x.html client_cert=require", "URL rules only"),
        ("TYPE SSLCERTERR", "text/plain", "has no ON or REDIRECT handler"),
        ("ON /x", "call 'unbalanced", "unbalanced"),
    ],
)
def test_configuration_errors_are_located(key, value, fragment):
    with pytest.raises(ConfigErrors) as e:
        table((key, value))
    (err,) = e.value.errors
    assert err.file == "ports.ini" and err.section == "web:W"
    assert err.key.startswith(key.split()[0])
    assert fragment in err.message, err.message


def test_second_exception_handler_is_an_error():
    with pytest.raises(ConfigErrors) as e:
        table(("ON SSLNOCERTERR", "page a.html"), ("REDIRECT SSLNOCERTERR", "https://e.org/"))
    assert "second handler" in str(e.value)


def test_all_errors_reported_at_once():
    with pytest.raises(ConfigErrors) as e:
        table(("ON GET FORBIDDEN", "page a.html"), ("ON /y", "nope x"), ("ON /z", "page z.html"))
    assert len(e.value.errors) == 2


def test_unloadable_callable_is_a_located_error():
    def resolve(ref):
        raise LookupError(f"{ref} does not exist")

    with pytest.raises(ConfigErrors) as e:
        table(("ON /x", "call views:missing"), resolve=resolve)
    assert e.value.errors[0].key == "ON /x" and "does not exist" in e.value.errors[0].message


def test_duplicate_rule_key_is_located_by_the_parser(tmp_path):
    text = "[port:W]\ntype=webserv\nlisten=tcp:0\ncertificate=c.pem\n[web:W]\nON /a = page a\nON /a = page b\n"
    with pytest.raises(ConfigErrors) as e:
        parse_definitions(text, "ports.ini", tmp_path)
    assert e.value.errors[0].section == "web:W" and "set twice" in e.value.errors[0].message


# -- identity rules -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def alice(pki):
    return [pki.issued["alice"].cert, pki.inter.cert, pki.root.cert]


@pytest.fixture(scope="module")
def bob(pki):
    return [pki.issued["bob"].cert, pki.inter.cert, pki.root.cert]


def allowed(expr, chain, **kw):
    return parse_policy(expr).check(Subject(chain, **kw)).allowed


def test_identity_dn_regex(alice, bob):
    # The Okta seed's filter: a regular expression over the whole subject DN.
    assert allowed(r"dn:'^CN=alice,OU=[a-z]+,OU=[a-z]+,O=Example Org$'", alice)
    assert not allowed(r"dn:'^CN=alice,.*'", bob)
    assert not allowed("dn:alice", alice)  # full match, not a search


def test_identity_cn_ou_o(alice, bob):
    assert allowed("cn:alice", alice) and not allowed("cn:alice", bob)
    assert allowed("cn:ali*", alice)
    assert allowed("ou:eng", alice) and allowed("ou:ops", alice) and not allowed("ou:eng", bob)
    assert allowed("o:'Example Org'", bob)


def test_identity_san_dns_wildcards(alice):
    assert allowed("dns:alice.example.test", alice)
    assert allowed("dns:*.example.test", alice)
    assert not allowed("dns:*.test", alice)  # * is one label
    assert allowed("dns:**.test", alice)  # ** is one or more labels
    assert not allowed("dns:bob.example.test", alice)


def test_identity_san_email(alice, bob):
    assert allowed("email:alice@example.test", alice)
    assert allowed("email:*@example.test", alice)
    assert allowed("email:*@**.test", alice)
    assert not allowed("email:*@example.org", alice)
    assert not allowed("email:*@example.test", bob)


def test_identity_san_uri_spiffe(alice):
    assert allowed("uri:spiffe://example.test/alice", alice)
    assert allowed("uri:spiffe://example.test/*", alice)
    assert allowed("uri:spiffe://example.test/**", alice)
    assert not allowed("uri:spiffe://other.test/*", alice)
    assert not allowed("uri:spiffe://example.test/*/x", alice)


def test_spiffe_segments():
    from janustls.core.identity import san_pattern

    one = san_pattern("uri", "spiffe://td/ns/*/sa/*")
    assert one("spiffe://td/ns/prod/sa/web") and not one("spiffe://td/ns/prod/x/sa/web")
    many = san_pattern("uri", "spiffe://td/ns/**")
    assert many("spiffe://td/ns/prod/sa/web") and not many("spiffe://td/other")


def test_identity_ip(alice, bob):
    assert allowed("ip:127.0.0.1", alice) and allowed("ip:127.0.0.0/8", alice)
    assert not allowed("ip:10.0.0.0/8", alice) and not allowed("ip:127.0.0.1", bob)


def test_identity_fingerprint_and_spki(alice, bob):
    leaf = alice[0]
    fp = leaf.fingerprint(hashes.SHA256()).hex()
    assert allowed(f"sha256:{fp}", alice) and not allowed(f"sha256:{fp}", bob)
    assert allowed("sha256:" + ":".join(fp[i : i + 2].upper() for i in range(0, 64, 2)), alice)
    spki = leaf.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    pin = base64.b64encode(hashlib.sha256(spki).digest()).decode()
    assert allowed(f"spki:{pin}", alice) and allowed(f"spki:sha256//{pin}", alice) and not allowed(f"spki:{pin}", bob)


def test_identity_peer_ip_and_reverse_names(alice, bob, pki):
    assert allowed("peer", alice, peer_ip="127.0.0.1")
    assert not allowed("peer", alice, peer_ip="10.1.2.3")
    # A DNS SAN for a name the address reverse-resolves to (the adapter did the lookup).
    assert allowed("peer", alice, peer_ip="10.1.2.3", peer_names=("alice.example.test",))
    assert not allowed("peer", bob, peer_ip="127.0.0.1", peer_names=("localhost",))
    p = parse_policy("peer")
    assert p.uses_peer
    assert not p.needs_lookup(Subject(alice, peer_ip="127.0.0.1"))  # the IP SAN settles it
    assert p.needs_lookup(Subject(bob, peer_ip="127.0.0.1"))


def test_identity_predicate(alice, bob):
    seen = []

    def resolve(ref):
        assert ref == "preds:is_bob"
        return lambda conn: seen.append(conn) or conn == "bob-conn"

    p = parse_policy("call:preds:is_bob", resolve=resolve)
    assert p.check(Subject(bob, connection="bob-conn")).allowed
    assert not p.check(Subject(alice, connection="alice-conn")).allowed
    assert seen == ["bob-conn", "alice-conn"]


def test_identity_predicate_returning_a_deferred_refuses(alice):
    from twisted.internet import defer

    p = parse_policy("call:preds:later", resolve=lambda ref: lambda conn: defer.succeed(True))
    with pytest.raises(TypeError):
        p.check(Subject(alice))


def test_identity_operators(alice, bob):
    assert allowed("cn:bob | cn:alice", alice)
    assert allowed("cn:bob cn:alice", alice)  # whitespace: another alternative
    assert allowed("cn:alice & ou:eng", alice) and not allowed("cn:alice & ou:sales", alice)
    assert allowed("ou:sales & cn:alice | cn:bob", bob)  # & binds tighter
    assert allowed("anyone", []) and allowed("*", [])
    assert allowed("cert", bob) and not allowed("cert", [])


def test_identity_refusal_reason_and_rule(alice):
    p = parse_policy("cn:bob", "[port:SECURE] allow")
    v = p.check(Subject(alice))
    assert not v.allowed and v.reason is Reason.NOT_ALLOWED and v.rule == "[port:SECURE] allow = cn:bob"
    refusal = v.refusal(Subject(alice))
    assert refusal.reason is Reason.NOT_ALLOWED and "CN=alice" in refusal.subject and "cn:bob" in refusal.detail
    assert p.check(Subject(())).reason is Reason.NO_CERTIFICATE


@pytest.mark.parametrize(
    "expr,fragment",
    [
        ("", "is empty"),
        ("cn:", "is not a term"),
        ("| cn:a", "needs a term"),
        ("cn:a &", "ends with an operator"),
        ("dn:'('", "not a regular expression"),
        ("ip:300.1.1.1", "not an IP address"),
        ("sha256:abcd", "not 32 bytes"),
        ("sha256:zz", "not a hexadecimal"),
        ("spki:!!", "not base64"),
        ("email:nobody", "local part"),
        ("uri:noscheme", "absolute URI"),
        ("colour:blue", "not a kind"),
        ("call:nomodule", "MODULE:CALLABLE"),
        ("cn:'open", "unbalanced"),
    ],
)
def test_identity_syntax_errors(expr, fragment):
    with pytest.raises(PolicyError) as e:
        parse_policy(expr, resolve=lambda ref: None)
    assert fragment in str(e.value)
