"""Who is asking: whether one request comes from this machine's own users or may come from anyone.

A studio bound to 127.0.0.1 is still public when a reverse proxy (nginx, a tunnel, ngrok, cloudflared) forwards
strangers to it: their requests reach the server from the loopback address. So exposure is judged per request:

- the server is exposed (another --host than loopback, --share, a Hugging Face Space): every request is public;
- a request carrying a forwarding header (`Forwarded`, `X-Forwarded-For`, `X-Real-IP`, ...) is public, whatever
  address it arrived from: a proxy put it there;
- a request from a client address that is not loopback is public; an unknown address counts as public too.

Only a loopback request without forwarding headers to a loopback-bound, unshared server is private. A public
request loads the shipped models and the curated hub ids only (app/registry.py). The operator opens the studio up
with `python app.py --allow-any-model`: every request may then load any folder of the machine or any hub id.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping

# Headers a proxy adds (RFC 7239 and the common de-facto ones); a browser talking to us directly sends none.
FORWARDING_HEADERS = (
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-real-ip",
    "x-client-ip",
    "cf-connecting-ip",
    "true-client-ip",
    "fly-client-ip",
)


def is_loopback(host: str | None) -> bool:
    """An IPv4/IPv6 loopback address (127.0.0.0/8, ::1, ::ffff:127.0.0.1) or 'localhost'; None is not."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:  # a name that is not an address (e.g. starlette's 'testclient'): unknown, so not ours
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def is_public(headers: Mapping[str, str] | None, client_host: str | None, *, server_exposed: bool) -> bool:
    """Whether a request may come from anyone: the server is exposed, a proxy forwarded the request, or it came
    from an address other than loopback. `headers` in any letter case."""
    if server_exposed:
        return True
    names = {str(k).lower() for k in (headers or {}).keys()}
    if names.intersection(FORWARDING_HEADERS):
        return True
    return not is_loopback(client_host)


def request_is_public(request, *, server_exposed: bool) -> bool:
    """is_public for a gr.Request (or anything with `.headers` and `.client.host`); a missing request, or one
    without headers or client, is judged from what is there (no client address: public)."""
    if request is None:
        return True
    headers = getattr(request, "headers", None)
    client = getattr(request, "client", None)
    return is_public(headers, getattr(client, "host", None), server_exposed=server_exposed)


def current_request():
    """The gr.Request of the event handler running in this thread (gradio sets it around every handler call);
    None outside a handler (the library, start-up, a test calling the registry directly)."""
    try:
        from gradio.context import LocalContext
    except ImportError:
        return None
    return LocalContext.request.get(None)


def current_verdict(*, server_exposed: bool) -> bool:
    """Whether the request being handled in this thread is public; outside a handler, the server's exposure."""
    request = current_request()
    return server_exposed if request is None else request_is_public(request, server_exposed=server_exposed)


def visitor_of(request) -> str:
    """Whose device time a request counts as (the scheduler's fair share, app/scheduler.py): the client address a
    proxy forwarded (X-Real-IP, else the first X-Forwarded-For hop, else Forwarded's `for=`), else the address the
    request came from. A
    loopback request without forwarding headers is the machine's own user (or a test's clients): each browser
    session counts on its own. A visitor without any of these counts as one anonymous visitor. (A client can write
    its own X-Forwarded-For first hop; a proxy that sets X-Real-IP, as nginx does, closes that.)"""
    if request is None:
        return ""
    headers = {str(k).lower(): str(v) for k, v in (getattr(request, "headers", None) or {}).items()}
    rfc7239 = re.search(r'for="?\[?([^;,"\]]+)', headers.get("forwarded", ""), re.IGNORECASE)
    forwarded = (
        headers.get("x-real-ip")
        or headers.get("x-forwarded-for", "").split(",")[0]
        or (rfc7239.group(1) if rfc7239 else "")
    )
    if forwarded.strip():
        return "ip:" + forwarded.strip()
    host = getattr(getattr(request, "client", None), "host", None)
    session = getattr(request, "session_hash", None)
    if is_loopback(host) and not names_forwarding(headers) and session:
        return "session:" + session
    return "ip:" + (host or "?")


def names_forwarding(headers: Mapping[str, str]) -> bool:
    return bool({str(k).lower() for k in headers}.intersection(FORWARDING_HEADERS))
