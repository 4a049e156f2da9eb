"""The PROXY protocol header (HAProxy's, versions 1 and 2), sans-IO: bytes in, a header out.

Spec: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt, revision 2020/03/05 (the
latest in HAProxy's doc/proxy-protocol.txt); section numbers below are its. A proxy that
relays raw TCP (HAProxy in TCP mode, stunnel, AWS NLB) writes one header at the start of the
connection saying who the client was; the HTTP request follows.

`parse(buf)` looks at the bytes received so far on a new connection and returns one of:
  - `NEED_MORE`: what is there is the start of a header; call again with more bytes;
  - `NOT_PROXY`: these bytes cannot start a header: the connection is plain HTTP. Decided on the
    first byte that differs from both `PROXY ` and the v2 signature, so a request is never held
    back waiting for bytes: `G`, `H`, `D`, `O`, `C`, `T` decide at once, `PUT`/`POST`/`PATCH`/
    `PRI` at the second or third byte;
  - a `ProxyHeader`, whose `consumed` bytes are the header; the HTTP request starts after them;
or raises `ProxyProtocolError(reason)`: the bytes are a header, but malformed or too long. The
spec says to abort such a connection (2.1: "must be discarded and cause the receiver to abort
the connection"): berth closes it unanswered and logs why (berth/worker/preface.py), as the
README says. Gunicorn answers 400 for v1 (for v2 its `InvalidProxyHeader` is missing from the
worker's list of client errors and becomes a 500).

Version 1 (2.1), one line of text:
  - `PROXY TCP4 <src> <dst> <srcport> <dstport>\\r\\n` (`TCP6` likewise), fields separated by
    exactly one space; the addresses of the announced family, IPv4 as four decimals without
    leading zeros, IPv6 without a zone; ports 0..65535 in decimal, no sign, no leading zero;
  - `PROXY UNKNOWN\\r\\n`, and anything between `UNKNOWN ` and the CRLF is ignored: the proxy
    could not tell; the real peer stays the client;
  - the line ends with CRLF within 107 bytes (the longest legal line, `PROXY UNKNOWN` with two
    full IPv6 addresses and ports); a CR or LF alone inside or ending it is an error.
Version 2 (2.2), binary: the 12-byte signature, then version/command, family/protocol, a 16-bit
length and that many bytes (addresses, then TLVs):
  - the version nibble must be 2 and the command LOCAL (0) or PROXY (1);
  - LOCAL (a health check from the proxy itself): the block, family included, is ignored, the
    real peer stays the client;
  - PROXY: the family AF_UNSPEC/INET/INET6/UNIX (0-3) and protocol UNSPEC/STREAM/DGRAM (0-2),
    other values rejected as the spec says; UNSPEC in either means the addresses are ignored.
    The address block must be as long as its family needs (12, 36, 216 bytes); the TLVs after
    it are checked for framing (type, 16-bit length, a value inside the block) and returned
    uninterpreted;
  - the length is bounded by `max_v2_length` (`V2_MAX_LENGTH`, see there), checked as soon as
    the length field is in, before the rest is waited for.
A bad v1 line is known when its CRLF, a bare CR or LF, or its 107th byte arrives; a bad v2 at
the first bad byte of its fixed 16, or when its whole length is in. Which family overrides
REMOTE_ADDR is `environ_additions`' business.

Gunicorn (27.0.1 `gunicorn/http/message.py`) differs, and where berth follows the spec instead:
  - it refuses `PROXY UNKNOWN` (400), v2 UDP, and v2 PROXY with UNSPEC protocol or UNIX
    family; berth accepts them and keeps the real peer, the spec's fallback (2.2: "A receiver is
    not required to implement other ones, provided that it automatically falls back to the
    UNSPEC mode");
  - its v1 reads until a CRLF with no bound; its ports go through `int()`, so `+80`, `0080`
    and `8_0` pass; it bounds no v2 length but the 16-bit field's 65535;
  - it waits for 12 bytes before deciding a connection is plain HTTP.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import socket
import struct
from dataclasses import dataclass

V1_PREFIX = b"PROXY "  # Gunicorn's marker: `PROXY` + space (a method named PROXYFOO is HTTP)
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX_LENGTH = 107  # the spec's worst case, CRLF included (2.1)

# The v2 length (bytes after the 16-byte fixed part) berth accepts. The spec designs headers to
# fit in 536 bytes (2: "the smallest TCP segment any TCP/IP host is required to support"). The
# largest address block is 216 bytes (UNIX); what real proxies add is a few hundred bytes of
# TLVs: HAProxy's ALPN, AUTHORITY (the SNI, up to 255), UNIQUE_ID (up to 128), CRC32C and SSL
# (version, client CN, cipher, algorithms), AWS NLB's VPC endpoint id. 4 KiB is several times
# that and still keeps what a connection buffers before its first request to one page.
V2_MAX_LENGTH = 4096

PROXY, LOCAL = "PROXY", "LOCAL"
TCP4, TCP6, UDP4, UDP6 = "TCP4", "TCP6", "UDP4", "UDP6"
UNIX_STREAM, UNIX_DGRAM, UNSPEC, UNKNOWN = "UNIX_STREAM", "UNIX_DGRAM", "UNSPEC", "UNKNOWN"

MODES = ("auto", "v1", "v2")  # Gunicorn's proxy_protocol values other than off


class Status(enum.Enum):
    NEED_MORE = "need more bytes"
    NOT_PROXY = "not a PROXY header"


NEED_MORE = Status.NEED_MORE
NOT_PROXY = Status.NOT_PROXY


class ProxyProtocolError(Exception):
    """A malformed or over-long PROXY header: abort the connection. `reason` is one line."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A parsed header. Addresses are text for IP families (as written in v1; as
    `socket.inet_ntop` writes them in v2, which is what Gunicorn gives), bytes for UNIX
    (the path up to its NUL; an abstract name keeps its leading NUL), None when the header
    carries none (LOCAL, UNSPEC, UNKNOWN). Ports are None likewise, and for UNIX."""

    version: int  # 1 or 2
    command: str  # PROXY or LOCAL (v1 is always PROXY)
    family: str  # TCP4, TCP6, UDP4, UDP6, UNIX_STREAM, UNIX_DGRAM, UNSPEC (v2), UNKNOWN (v1)
    src_addr: str | bytes | None
    src_port: int | None
    dst_addr: str | bytes | None
    dst_port: int | None
    consumed: int  # the header's length in bytes: the request starts at buf[consumed:]
    tlvs: tuple[tuple[int, bytes], ...] = ()  # v2 (type, value) pairs, in order, uninterpreted

    @property
    def names_client(self) -> bool:
        """Whether the header replaces the peer: a PROXY command for TCP over IPv4 or IPv6. For
        every other header the real peer stays the client (spec 2.1 UNKNOWN, 2.2 LOCAL and the
        UNSPEC fallback)."""
        return self.command == PROXY and self.family in (TCP4, TCP6)


def parse(buf: bytes | bytearray, *, mode: str = "auto",
          max_v2_length: int = V2_MAX_LENGTH) -> Status | ProxyHeader:
    """Parse the start of a connection: `NEED_MORE`, `NOT_PROXY`, a `ProxyHeader`, or raise
    `ProxyProtocolError`. `mode` is Gunicorn's: `auto` takes either version, `v1` or `v2`
    only that one (the other's header is then NOT_PROXY, and the HTTP parser will refuse it).
    Call it again with the whole buffer as bytes arrive; it keeps no state."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    n = len(buf)
    if n == 0:
        return NEED_MORE
    if mode != "v1" and V2_SIGNATURE.startswith(bytes(buf[:12])):
        return _parse_v2(buf, max_v2_length) if n >= 12 else NEED_MORE
    if mode != "v2" and V1_PREFIX.startswith(bytes(buf[:6])):
        return _parse_v1(buf) if n >= 6 else NEED_MORE
    return NOT_PROXY


# --- Version 1 ----------------------------------------------------------------------------------

_PORT_TEXT = re.compile(rb"0|[1-9][0-9]{0,4}")


def _parse_v1(buf: bytes | bytearray) -> Status | ProxyHeader:
    end = buf.find(b"\r\n", 0, V1_MAX_LENGTH)
    if end < 0:
        lf = buf.find(b"\n", 0, V1_MAX_LENGTH)
        if lf >= 0:
            raise ProxyProtocolError("PROXY v1 line ends with LF alone, not CRLF")
        cr = buf.find(b"\r", 0, V1_MAX_LENGTH)
        if 0 <= cr < min(len(buf), V1_MAX_LENGTH) - 1:
            raise ProxyProtocolError("PROXY v1 line has a CR not followed by LF")
        if len(buf) >= V1_MAX_LENGTH:
            raise ProxyProtocolError(f"PROXY v1 line has no CRLF in its first {V1_MAX_LENGTH} "
                                     "bytes")
        return NEED_MORE
    line = bytes(buf[:end])
    if b"\r" in line or b"\n" in line:
        raise ProxyProtocolError("PROXY v1 line has a CR or LF alone before its CRLF")
    fields = line.split(b" ")
    proto = fields[1]
    if proto == b"UNKNOWN":
        return ProxyHeader(1, PROXY, UNKNOWN, None, None, None, None, end + 2)
    if proto not in (b"TCP4", b"TCP6"):
        raise ProxyProtocolError(f"PROXY v1 protocol {proto!r} is not TCP4, TCP6 or UNKNOWN")
    if len(fields) != 6:
        raise ProxyProtocolError(f"PROXY v1 line {line!r} is not 6 fields separated by single "
                                 "spaces")
    src, dst = (_v1_address(f, proto) for f in fields[2:4])
    sport, dport = (_v1_port(f) for f in fields[4:6])
    family = TCP4 if proto == b"TCP4" else TCP6
    return ProxyHeader(1, PROXY, family, src, sport, dst, dport, end + 2)


def _v1_address(text: bytes, proto: bytes) -> str:
    """IPv4 as `ipaddress` reads it: four decimals, no leading zeros (refused since Python
    3.9.5: `010.0.0.1` is octal to inet_aton). IPv6 without a zone (`%eth0`), which
    `ipaddress` would take but the spec's grammar has not."""
    try:
        address = text.decode("ascii")
        if proto == b"TCP4":
            ipaddress.IPv4Address(address)
            return address
        if "%" not in address:
            ipaddress.IPv6Address(address)
            return address
    except ValueError:  # UnicodeDecodeError included
        pass
    raise ProxyProtocolError(f"PROXY v1 address {text!r} is not a {proto.decode()} address")


def _v1_port(text: bytes) -> int:
    if _PORT_TEXT.fullmatch(text) is None or int(text) > 65535:
        raise ProxyProtocolError(f"PROXY v1 port {text!r} is not a decimal 0..65535 without "
                                 "sign or leading zero")
    return int(text)


# --- Version 2 ----------------------------------------------------------------------------------

# family nibble -> (name by protocol nibble 1 STREAM / 2 DGRAM, address block length)
_V2_FAMILIES = {
    1: ((TCP4, UDP4), 12),
    2: ((TCP6, UDP6), 36),
    3: ((UNIX_STREAM, UNIX_DGRAM), 216),
}
_PORTS = struct.Struct("!HH")


def _parse_v2(buf: bytes | bytearray, max_length: int) -> Status | ProxyHeader:
    n = len(buf)
    if n < 13:
        return NEED_MORE
    version, command = buf[12] >> 4, buf[12] & 0x0F
    if version != 2:
        raise ProxyProtocolError(f"PROXY v2 version nibble is {version}, not 2")
    if command > 1:
        raise ProxyProtocolError(f"PROXY v2 command {command} is neither LOCAL nor PROXY")
    if n < 14:
        return NEED_MORE
    family, protocol = buf[13] >> 4, buf[13] & 0x0F
    if command == 1 and (family > 3 or protocol > 2):
        raise ProxyProtocolError(f"PROXY v2 family/protocol byte {buf[13]:#04x} is not one the "
                                 "spec defines")
    if n < 16:
        return NEED_MORE
    length = buf[14] << 8 | buf[15]
    if length > max_length:
        raise ProxyProtocolError(f"PROXY v2 header announces {length} bytes, more than the "
                                 f"{max_length} accepted")
    total = 16 + length
    if n < total:
        return NEED_MORE
    if command == 0:  # LOCAL: "discard the protocol block including the family"
        return ProxyHeader(2, LOCAL, UNSPEC, None, None, None, None, total)
    if family == 0 or protocol == 0:  # UNSPEC: "the receiver should ignore address information"
        return ProxyHeader(2, PROXY, UNSPEC, None, None, None, None, total)
    names, need = _V2_FAMILIES[family]
    name = names[protocol - 1]
    if length < need:
        raise ProxyProtocolError(f"PROXY v2 {name} address block is {length} bytes, not "
                                 f"{need}")
    block = bytes(buf[16:total])
    if family == 3:
        src, dst = _unix_path(block[:108]), _unix_path(block[108:216])
        sport = dport = None
    else:
        af, size = (socket.AF_INET, 4) if family == 1 else (socket.AF_INET6, 16)
        src = socket.inet_ntop(af, block[:size])
        dst = socket.inet_ntop(af, block[size:2 * size])
        sport, dport = _PORTS.unpack_from(block, 2 * size)
    return ProxyHeader(2, PROXY, name, src, sport, dst, dport, total, _tlvs(block, need))


def _unix_path(raw: bytes) -> bytes:
    """A sun_path: a path ends at its NUL; an abstract name (leading NUL) has no terminator, so
    only the NUL padding after it is dropped."""
    if raw[:1] == b"\0":
        return raw.rstrip(b"\0")
    return raw.split(b"\0", 1)[0]


def _tlvs(block: bytes, start: int) -> tuple[tuple[int, bytes], ...]:
    """The TLVs after the addresses: type (1 byte), length (2), value. The count is bounded by
    the header length (3 bytes each at least). One that runs past the block is an error: the
    header was cut or forged, and HAProxy refuses it too."""
    tlvs, i, end = [], start, len(block)
    while i < end:
        if end - i < 3:
            raise ProxyProtocolError(f"PROXY v2 TLV at offset {16 + i} is cut short")
        size = block[i + 1] << 8 | block[i + 2]
        if i + 3 + size > end:
            raise ProxyProtocolError(f"PROXY v2 TLV at offset {16 + i} runs {size} bytes past "
                                     "the header")
        tlvs.append((block[i], block[i + 3:i + 3 + size]))
        i += 3 + size
    return tuple(tlvs)


# --- The WSGI environ ---------------------------------------------------------------------------

def truncated(peer: str, size: int, header_timeout: float | None = None) -> str:
    """The warning for a header the client began and did not finish: it closed the connection
    (`header_timeout` None), or sent nothing more within --header-timeout."""
    why = ("the client closed" if header_timeout is None
           else f"nothing more within --header-timeout, {header_timeout:g} s")
    return (f"truncated PROXY protocol header from {peer} ({size} bytes; {why}); closing the "
            "connection")


def environ_additions(header: ProxyHeader | None) -> dict[str, str]:
    """The environ keys a header sets, as Gunicorn's `proxy_environ` (gunicorn/http/wsgi.py)
    sets them, applied over the peer's REMOTE_ADDR/REMOTE_PORT for every request on the
    connection:
      - a PROXY for TCP4/TCP6: `PROXY_PROTOCOL` ("TCP4"/"TCP6"), `REMOTE_ADDR` (the source
        address), `REMOTE_PORT`, `PROXY_ADDR` (the destination: the address the client
        connected to at the proxy), `PROXY_PORT`; ports as strings, like every CGI value;
      - any other header: only `PROXY_PROTOCOL` ("LOCAL", "UNSPEC", "UNKNOWN", "UDP4",
        "UNIX_STREAM", ...); REMOTE_ADDR and REMOTE_PORT stay the real peer's. Here Gunicorn
        sets `REMOTE_ADDR` None and `REMOTE_PORT`/`PROXY_PORT` the string "None" (for LOCAL
        and UNSPEC; it refuses the rest), which breaks apps and loggers that expect text;
        berth keeps the peer, as the spec says for LOCAL and UNSPEC;
      - no header (None): nothing.
    """
    if header is None:
        return {}
    if header.names_client:
        return {
            "PROXY_PROTOCOL": header.family,
            "REMOTE_ADDR": str(header.src_addr),
            "REMOTE_PORT": str(header.src_port),
            "PROXY_ADDR": str(header.dst_addr),
            "PROXY_PORT": str(header.dst_port),
        }
    return {"PROXY_PROTOCOL": LOCAL if header.command == LOCAL else header.family}
