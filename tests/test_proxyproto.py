"""The PROXY protocol parser (`berth/http/proxyproto.py`), with real header bytes."""

from __future__ import annotations

import random
import socket
import struct

import pytest

from berth.http.proxyproto import (
    NEED_MORE,
    NOT_PROXY,
    V1_MAX_LENGTH,
    V2_MAX_LENGTH,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyProtocolError,
    environ_additions,
    parse,
)

REQUEST = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
SIG = b"\r\n\r\n\x00\r\nQUIT\n"  # written out here, not imported, so a wrong constant shows


def v2(block: bytes = b"", *, command: int = 1, fam: int = 0x11, version: int = 2,
       length: int | None = None) -> bytes:
    """A v2 header: signature, version/command, family/protocol, length, block."""
    size = len(block) if length is None else length
    return SIG + bytes([version << 4 | command, fam]) + struct.pack("!H", size) + block


def inet(src: str, dst: str, sport: int, dport: int) -> bytes:
    af = socket.AF_INET6 if ":" in src else socket.AF_INET
    return (socket.inet_pton(af, src) + socket.inet_pton(af, dst)
            + struct.pack("!HH", sport, dport))


def tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


def unix_block(src: bytes, dst: bytes) -> bytes:
    return src.ljust(108, b"\0") + dst.ljust(108, b"\0")


V1_TCP4 = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
V1_TCP6 = b"PROXY TCP6 2001:db8::1 2001:db8::ff 4711 80\r\n"
V1_UNKNOWN = b"PROXY UNKNOWN\r\n"
V2_TCP4 = v2(inet("203.0.113.7", "10.0.0.1", 51000, 8000))
V2_TCP6 = v2(inet("2001:db8::1", "2001:db8::2", 1, 65535), fam=0x21)
V2_UNIX = v2(unix_block(b"/run/client.sock", b"/run/berth.sock"), fam=0x31)
V2_LOCAL = v2(command=0, fam=0x00)
V2_TLVS = v2(inet("203.0.113.7", "10.0.0.1", 51000, 8000)
             + tlv(0x02, b"example.com") + tlv(0x04, b"") + tlv(0x05, b"id-1"))

ALL_HEADERS = {"v1 TCP4": V1_TCP4, "v1 TCP6": V1_TCP6, "v1 UNKNOWN": V1_UNKNOWN,
               "v2 TCP4": V2_TCP4, "v2 TCP6": V2_TCP6, "v2 UNIX": V2_UNIX, "v2 LOCAL": V2_LOCAL,
               "v2 TLVs": V2_TLVS}


def refused(buf, **kw) -> str:
    with pytest.raises(ProxyProtocolError) as info:
        parse(buf, **kw)
    return info.value.reason


# --- Telling a header from plain HTTP -----------------------------------------------------------

def test_the_signature_constant_is_the_specs():
    assert V2_SIGNATURE == SIG and len(SIG) == 12


def test_nothing_yet_needs_more():
    assert parse(b"") is NEED_MORE


@pytest.mark.parametrize("data, decided_at", [
    (REQUEST, 1),                                  # G
    (b"HEAD / HTTP/1.1\r\n", 1),
    (b"OPTIONS * HTTP/1.1\r\n", 1),
    (b"PUT /x HTTP/1.1\r\n", 2),                   # P could be PROXY, U cannot
    (b"POST /x HTTP/1.1\r\n", 2),
    (b"PATCH /x HTTP/1.1\r\n", 2),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 3),      # the HTTP/2 preface
    (b"PROXYFOO / HTTP/1.1\r\n", 6),               # not "PROXY ": Gunicorn serves it as HTTP
    (b"\r\nGET / HTTP/1.1\r\n", 3),                # RFC 9112 2.2 leading empty line
    (b"\r\n\r\nGET / HTTP/1.1\r\n", 5),
    (b"\x16\x03\x01\x02\x00", 1),                  # a TLS ClientHello
])
def test_plain_http_is_told_apart_on_its_first_differing_byte(data, decided_at):
    for k in range(1, decided_at):
        assert parse(data[:k]) is NEED_MORE, k
    assert parse(data[:decided_at]) is NOT_PROXY
    assert parse(data) is NOT_PROXY


def test_in_mode_v1_a_v2_header_is_not_proxy_and_the_reverse():
    assert parse(V2_TCP4 + REQUEST, mode="v1") is NOT_PROXY
    assert parse(b"\r", mode="v1") is NOT_PROXY
    assert parse(V1_TCP4 + REQUEST, mode="v2") is NOT_PROXY
    assert parse(b"P", mode="v2") is NOT_PROXY
    assert parse(V1_TCP4, mode="v1").version == 1
    assert parse(V2_TCP4, mode="v2").version == 2


def test_an_unknown_mode_is_refused():
    for mode in ("off", "V1", "", "true"):
        with pytest.raises(ValueError, match="mode must be one of auto, v1, v2"):
            parse(V1_TCP4, mode=mode)


# --- Complete headers, and every split point before that ----------------------------------------

@pytest.mark.parametrize("name", ALL_HEADERS)
def test_every_prefix_of_a_header_needs_more_and_the_whole_is_consumed_exactly(name):
    header = ALL_HEADERS[name]
    for k in range(1, len(header)):
        assert parse(header[:k]) is NEED_MORE, k
        assert parse(bytearray(header[:k])) is NEED_MORE, k
    whole = parse(header)
    assert isinstance(whole, ProxyHeader) and whole.consumed == len(header)
    assert parse(header + REQUEST) == whole
    assert parse(bytearray(header + REQUEST)) == whole


def test_bytes_fed_one_at_a_time_give_the_header_on_the_last_one():
    buf, results = bytearray(), []
    for byte in V2_TLVS + REQUEST:
        buf.append(byte)
        results.append(parse(buf))
        if results[-1] is not NEED_MORE:
            break
    assert len(buf) == len(V2_TLVS)
    assert results[:-1] == [NEED_MORE] * (len(V2_TLVS) - 1)
    assert results[-1].tlvs == ((0x02, b"example.com"), (0x04, b""), (0x05, b"id-1"))


# --- Version 1 ------------------------------------------------------------------------------------

def test_v1_tcp4_fields():
    h = parse(V1_TCP4 + REQUEST)
    assert (h.version, h.command, h.family) == (1, "PROXY", "TCP4")
    assert (h.src_addr, h.src_port, h.dst_addr, h.dst_port) == ("192.168.0.1", 56324,
                                                                "192.168.0.11", 443)
    assert (h.consumed, h.tlvs, h.names_client) == (len(V1_TCP4), (), True)


def test_v1_tcp6_fields_keep_the_address_as_written():
    h = parse(b"PROXY TCP6 2001:DB8:0::1 ::ffff:10.0.0.1 0 65535\r\n")
    assert (h.family, h.src_addr, h.src_port) == ("TCP6", "2001:DB8:0::1", 0)
    assert (h.dst_addr, h.dst_port) == ("::ffff:10.0.0.1", 65535)


def test_v1_unknown_keeps_the_real_peer_and_ignores_the_rest_of_its_line():
    for line in (V1_UNKNOWN, b"PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n",
                 b"PROXY UNKNOWN whatever \xff\x00 the sender put\r\n"):
        h = parse(line + REQUEST)
        assert (h.family, h.src_addr, h.src_port, h.consumed) == ("UNKNOWN", None, None, len(line))
        assert not h.names_client


def test_the_longest_v1_lines_fit():
    full6 = b":".join([b"ffff"] * 8)
    tcp6 = b"PROXY TCP6 " + full6 + b" " + full6 + b" 65535 65535\r\n"
    worst = b"PROXY UNKNOWN " + full6 + b" " + full6 + b" 65535 65535\r\n"
    assert (len(tcp6), len(worst)) == (104, V1_MAX_LENGTH)
    assert parse(tcp6).dst_port == 65535
    assert parse(worst).consumed == 107


def test_v1_without_crlf_in_107_bytes_is_refused():
    assert parse(b"PROXY UNKNOWN " + b"x" * 92) is NEED_MORE  # 106 bytes
    assert "no CRLF in its first 107 bytes" in refused(b"PROXY UNKNOWN " + b"x" * 93)
    assert "no CRLF" in refused(b"PROXY UNKNOWN " + b"x" * 92 + b"\r\n")  # CRLF ends at 108
    assert "no CRLF" in refused(b"PROXY TCP4 " + b"1" * 500)


def test_v1_bare_lf_or_cr_is_refused_as_soon_as_seen():
    assert "LF alone" in refused(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n")
    assert "CR not followed by LF" in refused(b"PROXY TCP4 1.2.3.4\r5")
    assert parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r") is NEED_MORE
    assert "alone before its CRLF" in refused(b"PROXY UNKNOWN a\nb\r\n")
    assert "alone before its CRLF" in refused(b"PROXY TCP4 1.2.3.4\r 5.6.7.8 1 2\r\n")


@pytest.mark.parametrize("line, reason", [
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1111  2222", "single spaces"),
    (b"PROXY TCP4  1.2.3.4 5.6.7.8 1111 2222", "single spaces"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222 ", "single spaces"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1111", "single spaces"),
    (b"PROXY TCP4 1.2.3.4\t5.6.7.8 1111 2222", "single spaces"),
    (b"PROXY  TCP4 1.2.3.4 5.6.7.8 1111 2222", "protocol b''"),
    (b"PROXY tcp4 1.2.3.4 5.6.7.8 1111 2222", "protocol b'tcp4'"),
    (b"PROXY UDP4 1.2.3.4 5.6.7.8 1111 2222", "protocol b'UDP4'"),
    (b"PROXY UNKNOWNX", "protocol b'UNKNOWNX'"),
    (b"PROXY ", "protocol b''"),
    (b"PROXY TCP4 ::1 ::1 1111 2222", "not a TCP4 address"),
    (b"PROXY TCP6 1.2.3.4 5.6.7.8 1111 2222", "not a TCP6 address"),
    (b"PROXY TCP4 01.2.3.4 5.6.7.8 1111 2222", "b'01.2.3.4'"),
    (b"PROXY TCP4 1.2.3.256 5.6.7.8 1111 2222", "b'1.2.3.256'"),
    (b"PROXY TCP4 1.2.3 5.6.7.8 1111 2222", "b'1.2.3'"),
    (b"PROXY TCP4 localhost 5.6.7.8 1111 2222", "b'localhost'"),
    (b"PROXY TCP6 fe80::1%eth0 ::1 1111 2222", "fe80::1%eth0"),
    (b"PROXY TCP6 2001:db8:::1 ::1 1111 2222", "2001:db8:::1"),
    (b"PROXY TCP6 [::1] ::1 1111 2222", "[::1]"),
    (b"PROXY TCP6 ::1/128 ::1 1111 2222", "::1/128"),
    (b"PROXY TCP4 1.2.3.\xd9\xa1 5.6.7.8 1111 2222", "b'1.2.3.\\xd9\\xa1'"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 +80 2222", "port b'+80'"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2222", "port b'-1'"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2222", "port b'080'"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 8_0 2222", "port b'8_0'"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 65536", "port b'65536'"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 0x50", "port b'0x50'"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 \xd9\xa1", "port b'\\xd9\\xa1'"),  # Arabic-Indic 1
])
def test_malformed_v1_lines_are_refused_with_the_reason(line, reason):
    message = refused(line + b"\r\n" + REQUEST)
    assert reason in message and "\n" not in message


def test_v1_ports_at_the_edges_are_taken():
    h = parse(b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n")
    assert (h.src_addr, h.src_port, h.dst_addr, h.dst_port) == ("0.0.0.0", 0,
                                                                "255.255.255.255", 65535)


# --- Version 2 ------------------------------------------------------------------------------------

def test_v2_tcp4_fields():
    h = parse(V2_TCP4 + REQUEST)
    assert (h.version, h.command, h.family) == (2, "PROXY", "TCP4")
    assert (h.src_addr, h.src_port, h.dst_addr, h.dst_port) == ("203.0.113.7", 51000,
                                                                "10.0.0.1", 8000)
    assert (h.consumed, h.tlvs, h.names_client) == (16 + 12, (), True)


def test_v2_tcp6_addresses_are_written_as_inet_ntop_writes_them():
    h = parse(V2_TCP6)
    assert (h.family, h.src_addr, h.dst_addr) == ("TCP6", "2001:db8::1", "2001:db8::2")
    assert (h.src_port, h.dst_port, h.consumed) == (1, 65535, 16 + 36)
    mapped = parse(v2(inet("::ffff:198.51.100.4", "::1", 2, 3), fam=0x21))
    assert mapped.src_addr == "::ffff:198.51.100.4"


def test_v2_udp_is_parsed_but_does_not_name_the_client():
    h4 = parse(v2(inet("203.0.113.7", "10.0.0.1", 53, 5353), fam=0x12))
    h6 = parse(v2(inet("2001:db8::1", "::1", 53, 5353), fam=0x22))
    assert (h4.family, h4.src_addr, h4.src_port) == ("UDP4", "203.0.113.7", 53)
    assert (h6.family, h6.src_addr) == ("UDP6", "2001:db8::1")
    assert not h4.names_client and not h6.names_client


def test_v2_unix_paths_end_at_their_nul_and_abstract_names_keep_theirs():
    h = parse(V2_UNIX)
    assert (h.family, h.src_addr, h.dst_addr, h.src_port) == (
        "UNIX_STREAM", b"/run/client.sock", b"/run/berth.sock", None)
    assert h.consumed == 16 + 216 and not h.names_client
    abstract = parse(v2(unix_block(b"\0name\0x", b"/p\0junk"), fam=0x32))
    assert (abstract.family, abstract.src_addr, abstract.dst_addr) == (
        "UNIX_DGRAM", b"\0name\0x", b"/p")


def test_v2_local_keeps_the_real_peer_and_skips_its_block_whatever_the_family():
    assert parse(V2_LOCAL + REQUEST) == ProxyHeader(2, "LOCAL", "UNSPEC", None, None, None,
                                                    None, 16)
    with_block = v2(inet("203.0.113.7", "10.0.0.1", 1, 2), command=0, fam=0x11)
    h = parse(with_block + REQUEST)
    assert (h.command, h.src_addr, h.consumed) == ("LOCAL", None, 28)
    assert parse(v2(b"abc", command=0, fam=0xFF)).consumed == 19  # family "ignored" (2.2)


def test_v2_unspec_family_or_protocol_ignores_the_addresses():
    for fam in (0x00, 0x01, 0x10, 0x20, 0x30):
        h = parse(v2(inet("203.0.113.7", "10.0.0.1", 1, 2) + tlv(1, b"h2"), fam=fam))
        assert (h.command, h.family, h.src_addr, h.tlvs) == ("PROXY", "UNSPEC", None, ()), fam
        assert h.consumed == 16 + 12 + 5 and not h.names_client


def test_v2_tlvs_are_returned_in_order_and_a_tlv_may_be_empty():
    h = parse(V2_TLVS + REQUEST)
    assert h.tlvs == ((0x02, b"example.com"), (0x04, b""), (0x05, b"id-1"))
    assert (h.src_addr, h.consumed) == ("203.0.113.7", len(V2_TLVS))
    ssl = tlv(0x20, b"\x01\x00\x00\x00\x00" + tlv(0x21, b"TLSv1.3"))
    assert parse(v2(inet("::1", "::1", 1, 2) + ssl, fam=0x21)).tlvs == ((0x20, ssl[3:]),)


def test_v2_tlvs_up_to_the_length_bound_are_taken():
    block = inet("203.0.113.7", "10.0.0.1", 1, 2)
    block += tlv(0x04, b"\0" * (V2_MAX_LENGTH - len(block) - 3))
    h = parse(v2(block))
    assert h.consumed == 16 + V2_MAX_LENGTH and len(h.tlvs) == 1


def test_v2_cut_or_overrunning_tlvs_are_refused():
    base = inet("203.0.113.7", "10.0.0.1", 1, 2)
    assert "TLV at offset 28 is cut short" in refused(v2(base + b"\x02\x00"))
    assert "TLV at offset 28 runs 5 bytes past" in refused(v2(base + b"\x02\x00\x05abcd"))
    assert "TLV at offset 33 runs" in refused(v2(base + tlv(1, b"h2") + b"\x05\x01\x00"))


@pytest.mark.parametrize("version", [0, 1, 3, 15])
def test_v2_wrong_version_is_refused_at_the_13th_byte(version):
    header = v2(inet("203.0.113.7", "10.0.0.1", 1, 2), version=version)
    assert f"version nibble is {version}, not 2" in refused(header[:13])


@pytest.mark.parametrize("command", [2, 3, 15])
def test_v2_unassigned_command_is_refused_at_the_13th_byte(command):
    assert f"command {command} is neither" in refused(v2(command=command)[:13])


@pytest.mark.parametrize("fam", [0x41, 0xF1, 0x13, 0x1F, 0x03, 0x33])
def test_v2_undefined_family_or_protocol_is_refused_at_the_14th_byte(fam):
    assert f"byte {fam:#04x} is not one the spec defines" in refused(v2(fam=fam)[:14])


def test_v2_length_over_the_bound_is_refused_before_the_rest_arrives():
    header = v2(fam=0x11, length=V2_MAX_LENGTH + 1)
    assert parse(header[:15]) is NEED_MORE
    assert f"announces {V2_MAX_LENGTH + 1} bytes" in refused(header)
    assert "announces 65535 bytes" in refused(v2(length=65535))
    assert "more than the 100 accepted" in refused(v2(length=101), max_v2_length=100)
    assert parse(v2(length=100)[:16], max_v2_length=100) is NEED_MORE


@pytest.mark.parametrize("fam, length, name, need", [
    (0x11, 11, "TCP4", 12), (0x11, 0, "TCP4", 12), (0x12, 8, "UDP4", 12),
    (0x21, 35, "TCP6", 36), (0x21, 12, "TCP6", 36), (0x31, 215, "UNIX_STREAM", 216),
])
def test_v2_address_block_shorter_than_its_family_is_refused(fam, length, name, need):
    reason = refused(v2(b"\x01" * length, fam=fam) + REQUEST)
    assert reason == f"PROXY v2 {name} address block is {length} bytes, not {need}"


def test_garbage_after_the_signature_prefix_is_not_proxy_only_before_the_signature_ends():
    assert parse(SIG[:11] + b"X") is NOT_PROXY
    assert parse(SIG[:5] + b"\x01") is NOT_PROXY
    assert "version nibble is 4" in refused(SIG + b"GET / HTTP/1.1")


def test_errors_carry_a_one_line_reason():
    with pytest.raises(ProxyProtocolError) as info:
        parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n")
    assert str(info.value) == info.value.reason and "\n" not in info.value.reason


def test_random_bytes_never_raise_anything_but_proxy_protocol_errors():
    rng = random.Random(7239)
    seeds = [*ALL_HEADERS.values(), b"PROXY TCP4 ", SIG]
    for _ in range(3000):
        buf = bytearray(rng.choice(seeds))
        for _ in range(rng.randrange(1, 4)):  # flip, cut or extend
            i = rng.randrange(len(buf))
            op = rng.randrange(3)
            if op == 0:
                buf[i] = rng.randrange(256)
            elif op == 1:
                del buf[i:]
            else:
                buf[i:i] = rng.randbytes(rng.randrange(1, 8))
            if not buf:
                break
        try:
            result = parse(buf)
        except ProxyProtocolError:
            continue
        if isinstance(result, ProxyHeader):
            assert result.consumed <= len(buf)
            if result.version == 1:
                assert buf[result.consumed - 2:result.consumed] == b"\r\n"
                assert 15 <= result.consumed <= V1_MAX_LENGTH
            else:
                assert 16 <= result.consumed <= 16 + V2_MAX_LENGTH
        else:
            assert result in (NEED_MORE, NOT_PROXY)


# --- The environ ----------------------------------------------------------------------------------

def test_a_tcp_header_sets_gunicorns_five_keys_as_strings():
    assert environ_additions(parse(V1_TCP4)) == {
        "PROXY_PROTOCOL": "TCP4", "REMOTE_ADDR": "192.168.0.1", "REMOTE_PORT": "56324",
        "PROXY_ADDR": "192.168.0.11", "PROXY_PORT": "443"}
    assert environ_additions(parse(V2_TCP6)) == {
        "PROXY_PROTOCOL": "TCP6", "REMOTE_ADDR": "2001:db8::1", "REMOTE_PORT": "1",
        "PROXY_ADDR": "2001:db8::2", "PROXY_PORT": "65535"}


def test_other_headers_set_only_proxy_protocol_and_keep_the_peer():
    assert environ_additions(parse(V2_LOCAL)) == {"PROXY_PROTOCOL": "LOCAL"}
    assert environ_additions(parse(V1_UNKNOWN)) == {"PROXY_PROTOCOL": "UNKNOWN"}
    assert environ_additions(parse(v2(fam=0x00))) == {"PROXY_PROTOCOL": "UNSPEC"}
    assert environ_additions(parse(V2_UNIX)) == {"PROXY_PROTOCOL": "UNIX_STREAM"}
    udp = parse(v2(inet("203.0.113.7", "10.0.0.1", 53, 5353), fam=0x12))
    assert environ_additions(udp) == {"PROXY_PROTOCOL": "UDP4"}


def test_no_header_adds_nothing():
    assert environ_additions(None) == {}


def _gunicorn_proxy_environ(data: bytes) -> dict:
    config = pytest.importorskip("gunicorn.config")
    from gunicorn.http.parser import RequestParser
    from gunicorn.http.wsgi import proxy_environ

    cfg = config.Config()
    cfg.set("proxy_protocol", "auto")
    req = next(RequestParser(cfg, iter([data]), ("127.0.0.1", 40000)))
    return proxy_environ(req)


@pytest.mark.parametrize("header", [
    V1_TCP4, V1_TCP6, b"PROXY TCP6 ::ffff:10.0.0.1 ::1 0 65535\r\n", V2_TCP4, V2_TCP6,
    v2(inet("::ffff:198.51.100.4", "::1", 2, 3), fam=0x21), V2_TLVS,
], ids=["v1-tcp4", "v1-tcp6", "v1-mapped", "v2-tcp4", "v2-tcp6", "v2-mapped", "v2-tlvs"])
def test_tcp_environ_is_the_same_as_gunicorns(header):
    assert environ_additions(parse(header)) == _gunicorn_proxy_environ(header + REQUEST)


def test_gunicorn_makes_remote_addr_none_for_local_where_berth_keeps_the_peer():
    gunicorn = _gunicorn_proxy_environ(V2_LOCAL + REQUEST)
    assert gunicorn["REMOTE_ADDR"] is None and gunicorn["REMOTE_PORT"] == "None"
    assert "REMOTE_ADDR" not in environ_additions(parse(V2_LOCAL))
