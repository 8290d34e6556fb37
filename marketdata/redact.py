"""Secrets out of anything we show: URLs (a password in ``user:pass@`` or in a query parameter such as
``?password=``) and text that came from elsewhere (an upstream error body may echo the keys it was sent).
Every log line, /health field and error line that carries a URL or an upstream body goes through here."""
from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, urlencode, urlsplit

MASK = "***"
SHOWN_MAX = 300  # an upstream body is cut to this many characters: one readable line, not a page of HTML

# a name that says its value is secret: password, pwd, secret, token, api_key, APCA-API-KEY-ID, auth, ...
_SECRET_NAME = r"[\w.-]*(?:passw(?:or)?d|pwd|pass|secret|token|key|auth\w*|signature|sig|credential)[\w.-]*"
_NAMED = re.compile(rf"(?i)(\"?\b{_SECRET_NAME}\"?\s*[:=]\s*)(\"[^\"]*\"|'[^']*'|[^\s,;&}}\"']+)")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s\"'<>]+")
# an opaque token: 20+ letters and digits (both present), as API keys, secrets and session ids look
_OPAQUE = re.compile(r"(?<![\w.])(?=[A-Za-z0-9+-]*\d)(?=[A-Za-z0-9+-]*[A-Za-z])[A-Za-z0-9+-]{20,}(?![\w.])")
_USERINFO = re.compile(r"(://[^/@:\s]*:)[^@/\s]*@")


def _secret_name(name: str) -> bool:
    return re.fullmatch(f"(?i){_SECRET_NAME}", name) is not None


def redact_url(url: str) -> str:
    """``url`` with its password and any secret-looking query value replaced by ***; a URL that does not
    parse is shown with every secret-looking part masked as text."""
    try:
        parts = urlsplit(url)
        port = parts.port  # a malformed port raises here
    except ValueError:
        return _mask_loose(url)
    netloc = parts.netloc
    if parts.password is not None:
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        if port is not None:
            host += f":{port}"
        netloc = (f"{parts.username}:{MASK}@" if parts.username else f":{MASK}@") + host
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_secret_name(k) for k, _ in pairs):
            query = urlencode([(k, MASK if _secret_name(k) else v) for k, v in pairs], safe="*")
    # assembled by hand: urlunsplit would turn unix:///path into unix:/path
    return (f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")
            + (f"#{parts.fragment}" if parts.fragment else ""))


def redact_text(text: str, secrets: Iterable[str | None] = (), limit: int | None = SHOWN_MAX) -> str:
    """``text`` fit to show: each of ``secrets`` (the values we hold, such as the Alpaca key pair), every URL's
    password, values named like a secret (``"secret": "..."``, ``token=...``), bearer tokens and opaque key-like
    strings replaced by ***; cut to ``limit`` characters."""
    out = str(text)
    for secret in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        out = out.replace(secret, MASK)
    out = _URL.sub(lambda m: redact_url(m.group(0)) if "://" in m.group(0) and _has_secret(m.group(0))
                   else m.group(0), out)
    out = _OPAQUE.sub(MASK, _mask_loose(out))
    if limit is not None and len(out) > limit:
        out = out[:limit - 1].rstrip() + "…"
    return out


def _mask_loose(text: str) -> str:
    """Secrets found by their shape alone: a URL's ``user:pass@``, named values, bearer tokens."""
    out = _USERINFO.sub(lambda m: m.group(1) + MASK + "@", text)
    out = _BEARER.sub(lambda m: f"{m.group(1)} {MASK}", out)
    return _NAMED.sub(lambda m: m.group(1) + MASK, out)


def _has_secret(url: str) -> bool:
    try:
        parts = urlsplit(url)
        return parts.password is not None or any(_secret_name(k) for k, _ in parse_qsl(parts.query))
    except ValueError:
        return False
