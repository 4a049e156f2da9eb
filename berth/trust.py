"""Which peers are trusted proxies, and which client a trusted proxy's headers name. Pure.

`TrustList.parse(value, setting_name)` reads `forwarded_allow_ips` or `proxy_allow_ips` as
Gunicorn's `validate_string_to_addr_list` does (gunicorn/config.py); `TrustList.trusts(peer)`
answers as Gunicorn's `_ip_in_allow_list` and the `isinstance(peer_addr, tuple)` test in front
of it (gunicorn/http/message.py) do, with one addition. The rules:
  - a value is a comma-separated string, or a list of such strings (berth's config file may
    give one; Gunicorn refuses a list: "Not a string"); each entry is an IPv4/IPv6 address, a
    CIDR network or `*`; whitespace around an entry and empty entries are ignored (Gunicorn
    refuses `a, ,b` but takes `a,,b`; berth takes both);
  - a network with host bits set (`192.168.1.1/24`) is refused, as Gunicorn's strict
    `ipaddress.ip_network` refuses it: it is nearly always a typo for the network;
  - `*` anywhere in the list trusts everyone (Gunicorn tests `'*' in allow_list`);
  - a peer that is not an IP address — a UNIX-socket peer, whose address `accept()` gives as
    `''`, a path or (abstract) bytes — is trusted unconditionally. Gunicorn's settings docs:
    "This option does not affect UNIX socket connections. Connections not associated with an
    IP address are treated as allowed, unconditionally." Only the process that can open the
    socket file can connect, and that is the proxy's business, not the list's;
  - a peer address that does not parse is not trusted (Gunicorn catches the ValueError);
  - the addition: an IPv4-mapped IPv6 peer (`::ffff:1.2.3.4`, what a dual-stack `::` listener
    sees for an IPv4 client) also matches as its IPv4 twin, so the default `127.0.0.1,::1`
    trusts `::ffff:127.0.0.1`. It *is* 127.0.0.1; Gunicorn compares it only as IPv6 and does
    not trust it. Entries inside `::ffff:0:0/96` are likewise matched as IPv4.

`client_from_forwarded()` picks the client's address from X-Forwarded-For / Forwarded for
berth's `--forwarded-remote-addr` (Gunicorn has no such setting: it never rewrites
REMOTE_ADDR from a header). Its rules are in its docstring. `client_as_uvicorn()` picks it as
Uvicorn's ProxyHeadersMiddleware does, for `-k uvicorn.workers.UvicornWorker`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

# (host, port): the port is None when the header gave none or an obfuscated one.
Address = tuple[str, "int | None"]

# ::ffff:0:0/96, the IPv4-mapped block (RFC 4291 2.5.5.2).
_MAPPED_NET = 0xFFFF << 32
_MAPPED_MASK = ((1 << 96) - 1) << 32


class TrustList:
    """A parsed `forwarded_allow_ips` / `proxy_allow_ips`. Build it with `TrustList.parse`.

    `trusts()` is on the path of every request, so the common answers are cheap: a `*` list says
    yes without looking at the peer; a peer written exactly as one of the listed addresses
    (`127.0.0.1`, the default) is found in a set of strings before anything is parsed; only
    then is the address parsed once and compared, as integers, with the listed addresses (a
    set) and the networks (a short list of (network, mask) pairs).
    """

    __slots__ = ("entries", "_everyone", "_exact_text", "_exact4", "_exact6", "_nets4",
                 "_nets6")

    def __init__(self, entries: tuple[str, ...],
                 networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]):
        self.entries = entries  # as written, for messages and `repr`
        self._everyone = "*" in entries
        exact_text, exact4, exact6, nets4, nets6 = set(), set(), set(), [], []
        for net in networks:
            if net.version == 6 and (int(net.network_address) & _MAPPED_MASK) == _MAPPED_NET \
                    and net.prefixlen >= 96:
                # ::ffff:10.0.0.0/104 is 10.0.0.0/8 seen through a dual-stack socket.
                net = ipaddress.IPv4Network((int(net.network_address) & 0xFFFFFFFF,
                                             net.prefixlen - 96))
            if net.prefixlen == net.max_prefixlen:
                (exact4 if net.version == 4 else exact6).add(int(net.network_address))
                exact_text.add(str(net.network_address))
            else:
                (nets4 if net.version == 4 else nets6).append(
                    (int(net.network_address), int(net.netmask)))
        self._exact_text = frozenset(exact_text)
        self._exact4, self._exact6 = frozenset(exact4), frozenset(exact6)
        self._nets4, self._nets6 = tuple(nets4), tuple(nets6)

    @classmethod
    def parse(cls, value: str | Iterable[str] | None, setting_name: str) -> TrustList:
        """`"127.0.0.1, 10.0.0.0/8, fd00::/8"`, `"*"`, a list of such strings, or None (empty).

        Raises ValueError, one line naming the setting and the entry:
        `forwarded_allow_ips: '10.0.0.1/8' is not an IP address, a CIDR network or '*'
        (10.0.0.1/8 has host bits set)`.
        """
        if value is None:
            parts: list[str] = []
        elif isinstance(value, str):
            parts = value.split(",")
        else:
            parts = []
            for item in value:
                if not isinstance(item, str):
                    raise ValueError(f"{setting_name}: {item!r} is not a string; give addresses "
                                     "and networks as strings")
                parts.extend(item.split(","))
        entries, networks = [], []
        for part in parts:
            entry = part.strip()
            if not entry:
                continue
            entries.append(entry)
            if entry == "*":
                continue
            try:
                networks.append(ipaddress.ip_network(entry))  # strict: no host bits set
            except ValueError as e:
                raise ValueError(f"{setting_name}: {entry!r} is not an IP address, a CIDR "
                                 f"network or '*' ({e})") from None
        return cls(tuple(entries), networks)

    @property
    def everyone(self) -> bool:
        """True when the list holds `*`: every peer is trusted."""
        return self._everyone

    def trusts(self, peer: object) -> bool:
        """Whether the connection's peer is trusted. `peer` is what `accept()` gave: an
        `(host, port[, flowinfo, scope_id])` tuple, or for a UNIX socket `''`, a path or bytes;
        a bare host string (`"10.1.2.3"`) is taken too.

        A UNIX-socket peer is trusted (Gunicorn's rule, see the module docstring). A string is
        taken for one when it is empty or starts with `/` or NUL; any other string must be an
        IP address, so a relative socket path (a client that bound to `sock`) is not trusted:
        pass the tuple or check the socket family to avoid that corner.
        """
        if self._everyone:
            return True
        if type(peer) is tuple:
            host = peer[0]
        elif isinstance(peer, str):
            if not peer or peer[0] in "/\0":
                return True
            host = peer
        elif isinstance(peer, (bytes, bytearray)):
            return True  # an abstract (Linux) or undecodable UNIX-socket address
        else:
            return False
        if host in self._exact_text:
            return True
        return self._match(host)

    def trusts_ip(self, host: str) -> bool:
        """Whether the IP address `host` (text, no port) is trusted. Unlike `trusts()`, nothing
        here is taken for a UNIX socket: text that is not an IP address is not trusted. For
        addresses read from headers."""
        if self._everyone or host in self._exact_text:
            return True
        return self._match(host)

    def _match(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        n = int(ip)  # a scope (fe80::1%eth0) is not part of the integer, as with `in network`
        if ip.version == 6:
            if (n & _MAPPED_MASK) == _MAPPED_NET and self._match4(n & 0xFFFFFFFF):
                return True
            if n in self._exact6:
                return True
            return any((n & mask) == net for net, mask in self._nets6)
        return self._match4(n)

    def _match4(self, n: int) -> bool:
        return n in self._exact4 or any((n & mask) == net for net, mask in self._nets4)

    def __repr__(self) -> str:
        return f"TrustList({','.join(self.entries)!r})"


# --- Picking the client from X-Forwarded-For / Forwarded ---------------------------------------

_PORT = re.compile(r"[0-9]{1,5}\Z")
_OBF = re.compile(r"_[A-Za-z0-9._-]+\Z")  # RFC 7239 6.3 obfnode / 6.4 obfport
_TCHARS = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_PAIR = re.compile(rf'({_TCHARS})=(?:({_TCHARS})|"((?:[^"\\]|\\.)*)")')  # RFC 7239 4
_QUOTED_PAIR = re.compile(r"\\(.)")


def _parse_node(text: str) -> Address | None:
    """One hop's address: `1.2.3.4`, `1.2.3.4:5678`, `[2001:db8::1]:4711`, `[::1]`, a bare
    `::1` (X-Forwarded-For writes IPv6 unbracketed; no port can follow it then). None when the
    hop names no usable address: `unknown`, an obfuscated `_hidden`, or anything malformed.
    An obfuscated port (`1.2.3.4:_p1`) keeps the host and gives port None."""
    port: int | None = None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        host, rest = text[1:end], text[end + 1:]
        if rest:
            if rest[0] != ":":
                return None
            port_text = rest[1:]
            if _PORT.match(port_text):
                port = int(port_text)
            elif not _OBF.match(port_text):
                return None
        if ":" not in host:  # brackets are for IPv6 only
            return None
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        if _PORT.match(port_text):
            port = int(port_text)
        elif not _OBF.match(port_text):
            return None
    else:
        host = text  # IPv4, bare IPv6, or a word such as `unknown`: the address check decides
    if port is not None and port > 65535:
        return None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None  # `unknown`, `_hidden`, a hostname, garbage
    return host, port


def _xff_nodes(values: Iterable[str]) -> list[str]:
    """X-Forwarded-For hops left to right, over all the header's lines in order. Empty list
    elements are skipped (RFC 9110 5.6.1)."""
    return [n for value in values for n in (p.strip(" \t") for p in value.split(",")) if n]


def _split_unquoted(text: str, sep: str) -> list[str]:
    """`text` split at each `sep` outside a quoted-string (a backslash escapes one character
    inside one). An unterminated quote runs to the end and leaves a part that will not parse."""
    parts, start, quoted, i, n = [], 0, False, 0, len(text)
    while i < n:
        c = text[i]
        if quoted and c == "\\":
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif c == sep and not quoted:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def _forwarded_nodes(values: Iterable[str]) -> list[str | None]:
    """The `for=` of each Forwarded element (RFC 7239 4), left to right over all the field lines,
    unquoted. None stands for an element that has no `for=`, has it twice (4: "MUST NOT occur
    more than once per forwarded-element") or does not parse: that hop is unknown. Empty
    elements and pairs are skipped."""
    nodes: list[str | None] = []
    for value in values:
        for element in _split_unquoted(value, ","):
            node: str | None = None
            count = pairs = 0
            malformed = False
            for pair in _split_unquoted(element, ";"):
                pair = pair.strip(" \t")
                if not pair:
                    continue
                pairs += 1
                m = _PAIR.fullmatch(pair)
                if m is None:
                    malformed = True
                    break
                if m.group(1).lower() == "for":
                    count += 1
                    quoted = m.group(3)
                    node = m.group(2) if quoted is None else _QUOTED_PAIR.sub(r"\1", quoted)
            if pairs:
                nodes.append(node if count == 1 and not malformed else None)
    return nodes


def _walk(nodes: list[str] | list[str | None], trust: TrustList) -> Address | None:
    """Right to left: the first hop not in `trust`. The rules:
      - with a `*` list only the right-most hop is read: it is what the peer (trusted, like
        everyone) says the client was; nothing to its left can be checked;
      - a hop whose address is unknown (`unknown`, `_hidden`, a Forwarded element without
        `for=`, garbage) stops the walk with None: who sent the hops to its left cannot be
        judged, and that hop itself is no address to give the app. The caller keeps the real
        peer. (RFC 7239 6.2/6.3 let a proxy hide a node; trusting what lies beyond it would let
        the client behind it choose its own address.);
      - when every hop is trusted there is no client to name: None (the peer stays). The
        left-most address is never taken for being left-most.
    """
    if not nodes:
        return None
    if trust.everyone:
        last = nodes[-1]
        return None if last is None else _parse_node(last)
    address: Address | None = None
    for node in reversed(nodes):
        address = None if node is None else _parse_node(node)
        if address is None:
            return None
        if not trust.trusts_ip(address[0]):
            return address
    return None


def client_from_forwarded(xff_values: list[str], forwarded_values: list[str],
                          trust: TrustList) -> Address | None:
    """The client's (host, port|None) as the trusted proxies tell it, or None (keep the peer).

    `xff_values` and `forwarded_values` are the X-Forwarded-For and Forwarded field lines in the
    order received (either may be empty). The caller checks first that the connection's peer is
    trusted (`trust.trusts(peer)`); this only reads the hops the headers list.

    Each proxy appends the address it received the request from, so the right-most hop was
    written by the peer, and each hop to the left by the hop to its right. Walking from the
    right, the first address that is not a trusted proxy is the client: everything to its left
    was written by that client (or by hosts it talked to) and can be anything. So the answer is
    the right-most untrusted address — never simply the left-most, which a client sets by
    sending its own X-Forwarded-For. The rules of the walk are in `_walk`.

    Addresses: X-Forwarded-For hops are `1.2.3.4`, `1.2.3.4:5678`, `::1`, `[::1]:80`; Forwarded
    hops are RFC 7239 `for=` values, quoted or not: `for=1.2.3.4`, `for="[2001:db8::1]:4711"`,
    `for=unknown`, `for=_hidden`, `for="1.2.3.4:_port"` (an obfuscated port gives port None).
    The host is returned as written, without brackets.

    When both headers are present and name different clients, the answer is None. A proxy
    usually appends to one of them and passes the other through from the client untouched; which
    one is not known here, and reading the wrong one would let the client choose its address.
    When they agree (same IP address) the Forwarded answer is returned, as it may carry a port.
    """
    xff_nodes, fwd_nodes = _xff_nodes(xff_values), _forwarded_nodes(forwarded_values)
    if not fwd_nodes:
        return _walk(xff_nodes, trust)
    if not xff_nodes:
        return _walk(fwd_nodes, trust)
    xff, fwd = _walk(xff_nodes, trust), _walk(fwd_nodes, trust)
    if xff is None or fwd is None:
        return None
    if ipaddress.ip_address(xff[0]) != ipaddress.ip_address(fwd[0]):
        return None
    return fwd


# --- X-Forwarded-For as Uvicorn reads it ---------------------------------------------------------

def client_as_uvicorn(xff: str, trust: TrustList) -> tuple[str, int] | None:
    """The client Uvicorn's ProxyHeadersMiddleware names from `xff` (the X-Forwarded-For lines
    joined with ","), or None where it keeps the peer: what an app had under Gunicorn with
    `-k uvicorn.workers.UvicornWorker`, for `berth -k` that class. Uvicorn 0.55's rules
    (uvicorn/middleware/proxy_headers.py, `_TrustedHosts.get_trusted_client_address`), which
    differ from `client_from_forwarded`'s:
      - the entries are the text between commas, stripped; empty ones count (`a, ` ends in
        an empty entry, which names no client: the peer stays);
      - with `*` the left-most entry is taken, whatever it is (berth's: the right-most);
      - else, right to left, the first entry whose host is not trusted, even one that is no
        address (`unknown` becomes the client's host); when all are trusted, the left-most;
      - an entry is `host`, `host:port` or `[v6]`, `[v6]:port`; the port is 0 when none is
        given or it is not a number (then the whole entry is the host, brackets and all);
      - Forwarded is not read.
    Trust is judged by `trust.trusts_ip` (an IPv4-mapped host matches its IPv4 entry; Uvicorn
    compares the address objects, where it does not)."""
    entries = [item.strip() for item in xff.split(",")]
    if trust.everyone:
        host, port = _uvicorn_host_port(entries[0])
    else:
        for entry in reversed(entries):
            host, port = _uvicorn_host_port(entry)
            if not host or not trust.trusts_ip(host):
                break
        else:
            host, port = _uvicorn_host_port(entries[0])
    return (host, port) if host else None


def _uvicorn_host_port(value: str) -> tuple[str, int]:
    """Uvicorn's `_parse_host_port`: `1.2.3.4:80`, `[::1]:80`, `[::1]`, `::1`, `1.2.3.4`; a
    port that int() does not read leaves the whole entry as the host (IPv4) or the host
    without one (IPv6 in brackets)."""
    if value.startswith("["):
        end = value.find("]")
        if end == -1:
            return value, 0
        host, rest = value[1:end], value[end + 1:]
        if not rest:
            return host, 0
        if not rest.startswith(":"):
            return value, 0
        try:
            return host, int(rest[1:])
        except ValueError:
            return host, 0
    if value.count(":") == 1:
        host, port = value.rsplit(":", 1)
        try:
            return host, int(port)
        except ValueError:
            return value, 0
    return value, 0
