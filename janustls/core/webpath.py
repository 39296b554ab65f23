"""The normal form of a request path: decoded once, dot-segments removed, ambiguities refused.

Pure: no reactor, no files.  Every decision of a webserv port (rules, identity rules,
`*` substitution, page files, WSGI `SCRIPT_NAME`/`PATH_INFO`, forward targets) is made
on the one string `normalise` returns, so a backend or a filesystem that reads the
path in its own way cannot see something other than what the rules judged.

The normal form (docs/web-rules.md, "Request paths"):

- percent-escapes are decoded once; the bytes must be UTF-8 (overlong forms, surrogates
  and invalid sequences are refused); a `%` not followed by two hex digits is refused;
- `%2F`, `%5C`, a backslash, NUL, control characters and `;` are refused: each reads as a
  separator or a parameter to some backend or filesystem;
- empty segments (`//`) are merged; `.` and `..` segments are removed as RFC 3986 5.2.4
  says, after decoding (so `%2e%2e` is `..`); a path that climbs above `/` is refused;
- a segment that ends in a dot or a space (`secure.`, `secure%20`) is refused: Windows
  and some backends read it as the name without it.

Refusal is `PathError` (the port answers 400).

A request path is normalised when its body limit is chosen and again when it is served,
and most paths repeat: `normal_form` remembers recent answers (bounded), and a path made
only of characters that need no decoding and no dot-segment goes by a single regex match.
"""

from __future__ import annotations

import re
import urllib.parse

__all__ = ["PathError", "normalise", "normal_form", "encode", "REFUSED_CHARACTERS"]

#: Characters refused anywhere in a decoded path (with every control character).
REFUSED_CHARACTERS = frozenset("\\;\x7f")
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
#: Kept as they are when a normal path is written back into a URL (RFC 3986 pchar minus `;`).
_SAFE = "/-._~!$&'()*+,=:@"
#: A path already in normal form and unchanged by `encode`: segments of `_SAFE` characters and
#: alphanumerics, none empty (but a final `/`), none starting or ending with a dot (so no `.`
#: or `..`).  Such a path normalises to itself.
_SEG = rb"[A-Za-z0-9\-_~!$&'()*+,=:@]+"
_PLAIN = re.compile(rb"/|(?:/" + _SEG + rb"(?:\." + _SEG + rb")*)+/?")
#: Paths up to this length are remembered, at most `_MEMO_SIZE` of them (then forgotten at once).
_MEMO_PATH = 512
_MEMO_SIZE = 4096
_memo: dict[bytes, tuple[str, bytes] | str] = {}


class PathError(ValueError):
    """A request path that cannot be normalised safely (answered with 400)."""


def normalise(raw: bytes | str) -> str:
    """The normal form of a request path (no query string), or PathError."""
    return normal_form(raw.encode("latin-1") if isinstance(raw, str) else raw)[0]


def normal_form(data: bytes) -> tuple[str, bytes]:
    """(`normalise(data)`, that written back as a URL path by `encode`), or PathError; remembered."""
    found = _memo.get(data)
    if found is None:
        if _PLAIN.fullmatch(data):
            found = (data.decode("ascii"), data)
        else:
            try:
                text = _normalise(data)
                found = (text, encode(text).encode("ascii"))
            except PathError as e:
                found = str(e)
        if len(data) <= _MEMO_PATH:
            if len(_memo) >= _MEMO_SIZE:
                _memo.clear()
            _memo[data] = found
    if isinstance(found, str):
        raise PathError(found)
    return found


def _normalise(data: bytes) -> str:
    if not data.startswith(b"/"):
        raise PathError("the path does not start with /")
    if _BAD_ESCAPE.search(data):
        raise PathError("a % that is not followed by two hex digits")
    for escape in _ESCAPE.findall(data):
        if escape.lower() in (b"2f", b"5c", b"00"):
            raise PathError(f"an encoded separator or NUL (%{escape.decode()})")
    decoded = urllib.parse.unquote_to_bytes(data)
    try:
        text = decoded.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        raise PathError("the path is not UTF-8 (or uses an overlong form)") from None
    for ch in text:
        if ch in REFUSED_CHARACTERS or ord(ch) < 0x20 or 0x80 <= ord(ch) < 0xA0:
            raise PathError(f"the path holds {ch!r}")
    out: list[str] = []
    segments = text.split("/")[1:]
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == "..":
            if not out:
                raise PathError("the path climbs above /")
            out.pop()
            if last:
                out.append("")
            continue
        if seg == ".":
            if last:
                out.append("")
            continue
        if seg == "":
            if last:
                out.append("")
            continue
        if seg.endswith((".", " ")) or seg.startswith(" "):
            raise PathError(f"a segment ends in a dot or a space ({seg!r})")
        out.append(seg)
    # a trailing "" means the path ends in "/"; merge a run of them
    while len(out) >= 2 and out[-1] == "" and out[-2] == "":
        out.pop()
    return "/" + "/".join(out)


def encode(path: str) -> str:
    """A normal path written back as a URL path (what a forward backend receives)."""
    return urllib.parse.quote(path, safe=_SAFE)
