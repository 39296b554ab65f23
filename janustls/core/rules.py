"""The rule table of a webserv port (`[web:PORT]`): parsing, matching, precedence, substitution.

Pure: no reactor, no files.  `build_table` turns the raw `WebRuleLine`s of the
configuration into a `RuleTable`, every mistake a ConfigError naming the file, the
section and the key; `RuleTable.resolve(method, path)` answers which rules apply,
and caches the answer per (method, path) so that a keep-alive client asking for the
same URL again pays a dictionary lookup.

Precedence (Janus, made explicit; docs/web-rules.md has examples):
1. Exception names (SSLNOCERTERR, SSLCERTERR, FORBIDDEN, SSLPROTOCOLERR) are matched
   only by rules naming them exactly; a wildcard URL never matches an exception.
2. Rules fall in three independent groups: actions (ON, REDIRECT), access (ALLOW,
   DISALLOW) and content types (TYPE).  In each group the most specific matching rule
   decides: more literal (non-`*`) characters first; then a URL without wildcards
   over one with; then a rule naming methods over one for every method.
3. Equal specificity: the earlier line of the table wins; in the access group,
   DISALLOW wins over ALLOW.
4. No matching action: 404.  No matching access rule: allowed (the port's `allow`
   still applies).  A rule for GET also answers HEAD.
"""

from __future__ import annotations

import enum
import re
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from janustls.core.forwarding import parse_backend
from janustls.core.identity import Policy, PolicyError, parse_policy
from janustls.core.procedures import REFERENCE
from janustls.errors import ConfigError, ConfigErrors

__all__ = [
    "Kind",
    "Action",
    "Exc",
    "Rule",
    "RuleTable",
    "Resolution",
    "build_table",
    "EXCEPTIONS",
    "DEFAULT_HOLD_LIMIT",
]

#: Largest request body held while a certificate is requested mid-connection (413 above).
DEFAULT_HOLD_LIMIT = 1 << 20
_CACHE_SIZE = 4096


class Kind(str, enum.Enum):
    ON = "ON"
    TYPE = "TYPE"
    REDIRECT = "REDIRECT"
    ALLOW = "ALLOW"
    DISALLOW = "DISALLOW"


class Action(str, enum.Enum):
    CALL = "call"
    PAGE = "page"
    REDIRECT = "redirect"
    WSGI = "wsgi"
    FORWARD = "forward"
    ASGI = "asgi"


class Exc(str, enum.Enum):
    """Exception names and the status their handlers answer with unless `status=` says otherwise."""

    SSLNOCERTERR = "SSLNOCERTERR"
    SSLCERTERR = "SSLCERTERR"
    FORBIDDEN = "FORBIDDEN"
    SSLPROTOCOLERR = "SSLPROTOCOLERR"

    @property
    def default_status(self) -> int:
        return 0 if self is Exc.SSLPROTOCOLERR else 403


EXCEPTIONS = frozenset(e.value for e in Exc)
_METHOD = re.compile(r"^[A-Z]+(,[A-Z]+)*$")
_CONTENT_TYPE = re.compile(r"^[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+(\s*;.*)?$")
_REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
_OPTIONS = frozenset({"status", "client_cert", "fallback", "allow", "max_body", "type", "mount"})


@dataclass(frozen=True, eq=False)
class Rule:
    """One line of the table, checked; `target` is the action's argument (may hold `*`)."""

    index: int
    key: str
    value: str
    kind: Kind
    methods: frozenset[str] | None
    url: str
    exception: Exc | None = None
    action: Action | None = None
    target: str = ""
    status: int | None = None
    client_cert: str | None = None
    fallback: str | None = None
    allow: Policy | None = None
    #: The rule's own `max_body=`; None: the port's `max_body` (and at most
    #: DEFAULT_HOLD_LIMIT on a `client_cert=` rule, whose body is held while asking).
    max_body: int | None = None
    content_type: str | None = None
    #: wsgi/asgi: "prefix" (the app sees the rule's literal prefix as SCRIPT_NAME / root_path and
    #: the rest as its path) or "root" (the app sees the full path; its own routes name it).
    mount: str = "prefix"
    #: The loaded callable for call/wsgi actions (filled by the adapter's resolver).
    handler: Any = None
    _regex: re.Pattern[str] | None = field(default=None, repr=False)

    @property
    def wildcards(self) -> int:
        return self.url.count("*")

    @property
    def specificity(self) -> tuple[int, int, int]:
        literal = len(self.url) - self.wildcards
        return (literal, 0 if self.wildcards else 1, 1 if self.methods else 0)

    @property
    def prefix(self) -> str:
        """The literal part of the URL before its first `*` (the mount point of a wsgi app)."""
        return self.url.split("*", 1)[0]

    @property
    def page_root(self) -> str:
        """The directory a `page` target with `*` is confined to (its text before the `*`, up to the last /)."""
        head = self.target.split("*", 1)[0]
        return head.rsplit("/", 1)[0] if "/" in head else ""

    def body_limit(self, port_default: int) -> int:
        """The largest request body this rule accepts."""
        if self.max_body is not None:
            return self.max_body
        return min(port_default, DEFAULT_HOLD_LIMIT) if self.client_cert else port_default

    def match(self, method: str, path: str) -> tuple[str, ...] | None:
        """The wildcard parts when the rule matches, else None."""
        if self.methods is not None and method not in self.methods and not (method == "HEAD" and "GET" in self.methods):
            return None
        if self._regex is None:
            return () if path == self.url else None
        m = self._regex.fullmatch(path)
        return m.groups() if m else None

    def substitute(self, parts: Sequence[str], text: str | None = None) -> str:
        """The action's target with each `*` replaced by the matching wildcard part, in order."""
        text = self.target if text is None else text
        if not parts or "*" not in text:
            return text
        pieces = text.split("*")
        out = [pieces[0]]
        for i, piece in enumerate(pieces[1:]):
            out.append(parts[i] if i < len(parts) else "")
            out.append(piece)
        return "".join(out)

    def describe(self, section: str) -> str:
        return f"[{section}] {self.key} = {self.value}"


@dataclass(frozen=True)
class Resolution:
    """Which rules apply to one (method, path), with the wildcard parts of the action."""

    action: Rule | None
    parts: tuple[str, ...] = ()
    access: Rule | None = None
    content_type: str | None = None


@dataclass
class RuleTable:
    section: str
    rules: tuple[Rule, ...]
    exceptions: Mapping[Exc, Rule]
    _cache: dict[tuple[str, str], Resolution] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        def ordered(rs: Iterable[Rule]) -> tuple[Rule, ...]:
            return tuple(sorted(rs, key=lambda r: (r.specificity, -r.index), reverse=True))

        self._actions = ordered(r for r in self.rules if r.kind in (Kind.ON, Kind.REDIRECT) and r.exception is None)
        self._access = tuple(
            sorted(
                (r for r in self.rules if r.kind in (Kind.ALLOW, Kind.DISALLOW)),
                key=lambda r: (r.specificity, r.kind is Kind.DISALLOW, -r.index),
                reverse=True,
            )
        )
        self._types = ordered(r for r in self.rules if r.kind is Kind.TYPE and r.exception is None)
        self.uses_client_cert = any(r.client_cert for r in self.rules)

    def exception(self, exc: Exc) -> Rule | None:
        return self.exceptions.get(exc)

    def resolve(self, method: str, path: str) -> Resolution:
        key = (method, path)
        found = self._cache.get(key)
        if found is not None:
            return found
        action: Rule | None = None
        parts: tuple[str, ...] = ()
        for r in self._actions:
            p = r.match(method, path)
            if p is not None:
                action, parts = r, p
                break
        access = next((r for r in self._access if r.match(method, path) is not None), None)
        ctype = None
        if action is not None and action.content_type:
            ctype = action.content_type
        else:
            for r in self._types:
                p = r.match(method, path)
                if p is not None:
                    ctype = r.target
                    break
        found = Resolution(action, parts, access, ctype)
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.clear()
        self._cache[key] = found
        return found


def _pattern(url: str) -> re.Pattern[str] | None:
    if "*" not in url:
        return None
    pieces = [re.escape(p) for p in url.split("*")]
    return re.compile("(.*)".join(pieces), re.DOTALL)


class _Refused(Exception):
    """One line's mistakes (every message); the line is skipped, the table goes on."""

    def __init__(self, *messages: str) -> None:
        super().__init__(*messages)
        self.messages = messages


_ACTIONS_HELP = (
    "call MODULE:CALLABLE | page FILE | redirect URL | wsgi MODULE:APP | asgi MODULE:APP | forward http://BACKEND"
)


def _read_key(key: str, exceptions: Mapping[Exc, Rule]) -> tuple[Kind, frozenset[str] | None, str, Exc | None]:
    """`KIND [METHODS] URL` -> (kind, methods, URL or exception name, the exception named)."""
    words = key.split()
    if not words:
        raise _Refused("is empty")
    try:
        kind = Kind(words[0].upper())
    except ValueError:
        raise _Refused(f"starts with {words[0]!r}; expected ON, TYPE, REDIRECT, ALLOW or DISALLOW") from None
    rest = words[1:]
    methods: frozenset[str] | None = None
    if len(rest) == 2:
        if not _METHOD.match(rest[0].upper()):
            raise _Refused(f"has {rest[0]!r} where HTTP methods go (e.g. GET or GET,POST)")
        methods = frozenset(rest[0].upper().split(","))
        url = rest[1]
    elif len(rest) == 1:
        url = rest[0]
    else:
        raise _Refused(f"should be {kind.value} [METHODS] URL")
    if url.startswith("/"):
        return kind, methods, url, None
    base = url.rstrip("*").upper()
    if url.upper() in EXCEPTIONS:
        exc = Exc(url.upper())
    elif "*" in url and any(e.startswith(base) for e in EXCEPTIONS):
        raise _Refused(
            f"names exceptions with a wildcard; an exception rule names exactly one of {', '.join(sorted(EXCEPTIONS))}"
        )
    else:
        raise _Refused(
            f"has URL {url!r}; expected a path starting with / or an exception name ({', '.join(sorted(EXCEPTIONS))})"
        )
    if methods is not None:
        raise _Refused("is an exception rule with a method; exception rules take no method (Janus MSIR.0489)")
    if kind in (Kind.ALLOW, Kind.DISALLOW):
        raise _Refused(f"is {kind.value} on an exception; exception rules are ON, TYPE or REDIRECT")
    if exc in exceptions and kind is not Kind.TYPE:
        raise _Refused(f"is a second handler for {exc.value}")
    return kind, methods, url, exc


def _access_fields(kind: Kind, value: str, where: str, resolve: Callable[[str], Any] | None) -> dict[str, Any]:
    """ALLOW and DISALLOW: the identity expression (DISALLOW alone: anyone)."""
    expr = value.strip() or ("anyone" if kind is Kind.DISALLOW else "")
    if not expr:
        raise _Refused("needs an identity expression (e.g. ALLOW /admin/* = ou:ops), or anyone")
    try:
        return {"allow": parse_policy(expr, where, resolve), "target": expr}
    except PolicyError as e:
        raise _Refused(f"identity expression {e}") from None


def _option(name: str, val: str, where: str, resolve: Callable[[str], Any] | None) -> tuple[str, Any]:
    """One `name=value` option of an ON or REDIRECT rule -> (Rule field, value)."""
    if name == "status":
        if not val.isdigit() or not 100 <= int(val) <= 599:
            raise _Refused(f"has status={val}; expected an HTTP status from 100 to 599")
        return "status", int(val)
    if name == "client_cert":
        if val.lower() not in ("require", "request"):
            raise _Refused(f"has client_cert={val}; expected require or request")
        return "client_cert", val.lower()
    if name == "fallback":
        if not val.startswith(("https://", "/")):
            raise _Refused(f"has fallback={val}; expected an https:// URL or a path")
        return "fallback", val
    if name == "max_body":
        if not val.isdigit():
            raise _Refused(f"has max_body={val}; expected a number of bytes")
        return "max_body", int(val)
    if name == "mount":
        if val.lower() not in ("prefix", "root"):
            raise _Refused(f"has mount={val}; expected prefix (the default) or root")
        return "mount", val.lower()
    if name == "type":
        if not _CONTENT_TYPE.match(val):
            raise _Refused(f"has type={val}; expected a content type such as text/html")
        return "content_type", val
    try:  # allow
        return "allow", parse_policy(val, f"{where} allow", resolve)
    except PolicyError as e:
        raise _Refused(f"has allow= whose identity expression {e}") from None


def _action_fields(kind: Kind, value: str, where: str, resolve: Callable[[str], Any] | None) -> dict[str, Any]:
    """ON and REDIRECT: the action, its target and options (every bad option reported)."""
    try:
        tokens = shlex.split(value, comments=False)
    except ValueError as e:
        raise _Refused(f"cannot be read: {e} (unbalanced quotes?)") from None
    if kind is Kind.REDIRECT:
        tokens = ["redirect"] + tokens
    if len(tokens) < 2:
        raise _Refused(f"needs an action: {_ACTIONS_HELP}")
    try:
        action = Action(tokens[0].lower())
    except ValueError:
        raise _Refused(f"has action {tokens[0]!r}; expected call, page, redirect, wsgi, asgi or forward") from None
    fields: dict[str, Any] = {"action": action, "target": tokens[1]}
    bad: list[str] = []
    for opt in tokens[2:]:
        name, eq, val = opt.partition("=")
        name = name.lower()
        if not eq or name not in _OPTIONS:
            bad.append(f"has {opt!r}; options are {', '.join(sorted(_OPTIONS))} (name=value)")
            continue
        try:
            field_name, field_value = _option(name, val, where, resolve)
        except _Refused as e:
            bad.extend(e.messages)
            continue
        fields[field_name] = field_value
    if bad:
        raise _Refused(*bad)
    return fields


def _check_action(fields: dict[str, Any], url: str, exc: Exc | None, resolve: Callable[[str], Any] | None) -> None:
    """What an action, its target and options must agree on; loads call/wsgi handlers (`resolve`)."""
    action, target = fields["action"], fields["target"]
    if fields.get("mount") is not None and action not in (Action.WSGI, Action.ASGI):
        raise _Refused(f"has mount=, which applies to wsgi and asgi rules only (this is {action.value})")
    if action in (Action.CALL, Action.WSGI, Action.ASGI) and "*" in target:
        raise _Refused(f"has a * in {action.value} {target}; substitution works in page and redirect targets")
    if action is Action.CALL and fields.get("handler") is not None:
        pass  # embedding: the callable itself (`_embedded`)
    elif action in (Action.CALL, Action.WSGI, Action.ASGI):
        if not REFERENCE.match(target):
            raise _Refused(f"has {action.value} {target!r}; expected MODULE:CALLABLE from the procedure library")
        if resolve is not None:
            try:
                fields["handler"] = resolve(target)
            except Exception as e:
                raise _Refused(f"{action.value} {target}: {e}") from None
    if action is Action.REDIRECT and fields.get("status") is not None and fields["status"] not in _REDIRECT_STATUS:
        raise _Refused(f"has status={fields['status']} on a redirect; expected one of 301, 302, 303, 307, 308")
    if action is Action.FORWARD:
        try:
            parse_backend(target.replace("*", "x"))
        except ValueError as e:
            raise _Refused(f"has forward {e}") from None
    if action is Action.PAGE and ".." in target.replace("\\", "/").split("/"):
        raise _Refused(f"has page {target!r}; a page stays inside the procedure library (no ..)")
    if exc is not None:
        if fields.get("client_cert") or fields.get("fallback") or fields.get("allow"):
            raise _Refused("is an exception rule; client_cert=, fallback= and allow= apply to URL rules only")
        if exc is Exc.SSLPROTOCOLERR and action is not Action.CALL:
            raise _Refused(
                "handles SSLPROTOCOLERR, which has no HTTP request to answer: only call MODULE:CALLABLE (a log hook)"
            )
        if action in (Action.WSGI, Action.ASGI, Action.FORWARD):
            raise _Refused(f"is an exception rule; {action.value} cannot be an exception handler")
        if "*" in target:
            raise _Refused("is an exception rule; there is no wildcard part to substitute")
    if fields.get("fallback") and fields.get("client_cert") is None:
        raise _Refused("has fallback= without client_cert=; fallback is where clients go that cannot be asked")
    if "*" in target and "*" not in url:
        raise _Refused(f"substitutes * into {target!r} but the URL {url!r} has no wildcard")


def _embedded(key: str, value: Any) -> tuple[str, Callable[..., Any]]:
    """An embedding program's action target: a callable, or (callable, "options").  Returns the
    rule's text (`call <name> options`, what logs and `describe` show) and the callable."""
    options = ""
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], str):
        value, options = value
    if not callable(value):
        raise _Refused(f'has {value!r}; expected rule text, a callable, or (callable, "options")')
    name = getattr(value, "__qualname__", None) or type(value).__name__
    module = getattr(value, "__module__", None)
    label = "".join(c for c in (f"{module}.{name}" if module else name) if not c.isspace() and c not in "\"'")
    return f"call <{label}> {options}".strip(), value


class _TableBuilder:
    """The rules and exception handlers read so far; TYPE lines of exceptions wait for their handler."""

    def __init__(self, section: str, resolve: Callable[[str], Any] | None) -> None:
        self.section = section
        self.resolve = resolve
        self.rules: list[Rule] = []
        self.exceptions: dict[Exc, Rule] = {}
        self.pending_types: dict[Exc, str] = {}

    def add(self, index: int, key: str, value: Any) -> None:
        """Read one line into the table; `_Refused` with its mistakes.

        `value` is the line's text, or (embedding) the Python callable an `ON` rule calls,
        alone or as (callable, "options"): `WebRuleLine("ON /hi", hello)`.
        """
        embedded = None
        if not isinstance(value, str):
            value, embedded = _embedded(key, value)
        kind, methods, url, exc = _read_key(key, self.exceptions)
        if embedded is not None and kind is not Kind.ON:
            raise _Refused("has a Python callable; only an ON rule calls one")
        fields: dict[str, Any] = dict(index=index, key=key, value=value, kind=kind, methods=methods, url=url,
                                      exception=exc, _regex=_pattern(url))  # fmt: skip
        where = f"[{self.section}] {key}"
        if kind is Kind.TYPE:
            self._add_type(fields, value, exc)
        elif kind in (Kind.ALLOW, Kind.DISALLOW):
            fields.update(_access_fields(kind, value, where, self.resolve))
            self.rules.append(Rule(**fields))
        else:  # ON and REDIRECT: an action, then options.
            fields.update(_action_fields(kind, value, where, self.resolve))
            if embedded is not None:
                fields["handler"] = embedded  # given, not loaded from the procedure library
            _check_action(fields, url, exc, self.resolve)
            self._add_action(Rule(**fields), exc)

    def _add_type(self, fields: dict[str, Any], value: str, exc: Exc | None) -> None:
        if not _CONTENT_TYPE.match(value):
            raise _Refused(f"has {value!r}; expected a content type such as text/css")
        if exc is None:
            self.rules.append(Rule(**fields, target=value))
        elif exc in self.exceptions:
            self.exceptions[exc] = _with(self.exceptions[exc], content_type=value)
        else:
            self.pending_types[exc] = value

    def _add_action(self, rule: Rule, exc: Exc | None) -> None:
        if exc is None:
            self.rules.append(rule)
            return
        if exc in self.pending_types:
            rule = _with(rule, content_type=self.pending_types.pop(exc))
        self.exceptions[exc] = rule


def build_table(
    lines: Sequence[Any],
    *,
    source: str,
    section: str,
    resolve: Callable[[str], Any] | None = None,
) -> RuleTable:
    """Check and compile a port's rule lines; raise ConfigErrors listing every mistake.

    `lines` are `janustls.core.config.WebRuleLine`s (key, value).  `resolve` loads
    `MODULE:CALLABLE` references from the procedure library (None: do not load).  An
    embedding program may give an ON rule's value as the callable itself, or as
    (callable, "options"): it is called as a `call` target is.
    """
    errors: list[ConfigError] = []
    table = _TableBuilder(section, resolve)
    for index, line in enumerate(lines):
        try:
            table.add(index, line.key, line.value)
        except _Refused as e:
            errors.extend(ConfigError(source, section, line.key, message) for message in e.messages)
    for exc in table.pending_types:
        errors.append(
            ConfigError(
                source,
                section,
                f"TYPE {exc.value}",
                f"sets a content type for {exc.value}, which has no ON or REDIRECT handler",
            )
        )
    if errors:
        raise ConfigErrors(errors)
    return RuleTable(section, tuple(table.rules), table.exceptions)


def _with(rule: Rule, **changes: Any) -> Rule:
    return replace(rule, **changes)
