"""Trust lists and the client named by forwarded headers (`berth/trust.py`), with plain values."""

from __future__ import annotations

import asyncio

import pytest

from berth.trust import TrustList, client_as_uvicorn, client_from_forwarded


def tl(value) -> TrustList:
    return TrustList.parse(value, "forwarded_allow_ips")


# --- Parsing the setting ---------------------------------------------------------------------

def test_comma_separated_entries_are_stripped_and_kept_in_order():
    t = tl(" 127.0.0.1 ,::1,\t10.0.0.0/8 , fd00::/8 ")
    assert t.entries == ("127.0.0.1", "::1", "10.0.0.0/8", "fd00::/8")
    assert not t.everyone


def test_a_list_of_strings_is_taken_and_its_items_may_hold_commas():
    t = tl(["127.0.0.1", " 10.0.0.0/8, 192.168.0.0/16 "])
    assert t.entries == ("127.0.0.1", "10.0.0.0/8", "192.168.0.0/16")


def test_empty_entries_and_empty_values_are_ignored():
    assert tl("127.0.0.1,, ,::1,").entries == ("127.0.0.1", "::1")
    for empty in ("", "  ", None, []):
        t = tl(empty)
        assert t.entries == () and not t.trusts("127.0.0.1")


def test_star_anywhere_trusts_everyone_as_gunicorn_does():
    for value in ("*", " * ", "10.0.0.1,*", ["*"]):
        t = tl(value)
        assert t.everyone
        assert t.trusts(("203.0.113.9", 5000)) and t.trusts("2001:db8::1")


@pytest.mark.parametrize("entry, detail", [
    ("192.168.1.1/24", "has host bits set"),
    ("10.0.0.0/33", "10.0.0.0/33"),
    ("localhost", "localhost"),
    ("1.2.3", "1.2.3"),
    ("01.2.3.4", "01.2.3.4"),
    ("fd00::/8/8", "fd00::/8/8"),
    ("**", "**"),
])
def test_a_bad_entry_is_refused_in_one_line_naming_the_setting_and_the_entry(entry, detail):
    with pytest.raises(ValueError) as info:
        TrustList.parse(f"127.0.0.1, {entry}", "proxy_allow_ips")
    message = str(info.value)
    assert message.startswith(f"proxy_allow_ips: {entry!r} is not an IP address")
    assert detail in message and "\n" not in message


def test_a_list_item_that_is_not_a_string_is_refused():
    with pytest.raises(ValueError, match=r"^forwarded_allow_ips: 3 is not a string"):
        tl(["127.0.0.1", 3])


# --- trusts() ---------------------------------------------------------------------------------

def test_listed_addresses_are_trusted_and_others_are_not():
    t = tl("127.0.0.1,::1,192.0.2.7")
    assert t.trusts("127.0.0.1") and t.trusts("::1") and t.trusts("192.0.2.7")
    assert not t.trusts("127.0.0.2") and not t.trusts("::2") and not t.trusts("192.0.2.70")


def test_a_peer_tuple_is_judged_by_its_host():
    t = tl("127.0.0.1,::1")
    assert t.trusts(("127.0.0.1", 41000))
    assert t.trusts(("::1", 41000, 0, 0))
    assert not t.trusts(("198.51.100.1", 41000))


def test_an_address_written_differently_is_still_found():
    t = tl("2001:db8::1, 10.0.0.1")
    assert t.trusts("2001:DB8:0:0:0:0:0:1")
    assert t.trusts("2001:0db8::0001")
    assert not t.trusts("2001:db8::2")


def test_networks_contain_their_addresses_only():
    t = tl("10.0.0.0/8, fd00::/8, 192.168.1.0/24")
    assert t.trusts("10.255.255.255") and t.trusts("10.0.0.0")
    assert t.trusts("fd12:3456::1") and t.trusts("192.168.1.200")
    assert not t.trusts("11.0.0.1") and not t.trusts("fe00::1") and not t.trusts("192.168.2.1")


def test_an_ipv4_mapped_peer_matches_its_ipv4_entry():
    t = tl("127.0.0.1, 10.0.0.0/8")
    assert t.trusts("::ffff:127.0.0.1") and t.trusts(("::ffff:127.0.0.1", 80, 0, 0))
    assert t.trusts("::ffff:10.1.2.3") and t.trusts("::ffff:a01:203")
    assert not t.trusts("::ffff:127.0.0.2") and not t.trusts("::ffff:11.0.0.1")
    assert not t.trusts("::127.0.0.1")  # IPv4-compatible (deprecated), not mapped


def test_a_mapped_entry_matches_the_ipv4_peer_and_the_mapped_peer():
    t = tl("::ffff:192.0.2.1, ::ffff:10.0.0.0/104")
    assert t.trusts("192.0.2.1") and t.trusts("::ffff:192.0.2.1")
    assert t.trusts("10.9.9.9") and t.trusts("::ffff:10.9.9.9")
    assert not t.trusts("192.0.2.2") and not t.trusts("11.0.0.1")


def test_a_mapped_peer_is_still_matched_as_ipv6_as_gunicorn_does():
    t = tl("::/0")
    assert t.trusts("::ffff:203.0.113.1")
    assert not t.trusts("203.0.113.1")  # an IPv4 peer is not in an IPv6 network


def test_a_scoped_peer_matches_without_its_scope():
    t = tl("fe80::1, fe80::/64")
    assert t.trusts("fe80::1%eth0")
    assert t.trusts("fe80::2%2")
    assert not tl("fe80::1").trusts("fe80::2%eth0")


def test_unix_socket_peers_are_trusted_unconditionally_as_gunicorn_does():
    t = tl("127.0.0.1")
    assert t.trusts("")                 # what accept() gives for an unnamed client
    assert t.trusts("/run/berth.sock")  # a client bound to a path
    assert t.trusts(b"\0abstract")      # Linux abstract namespace
    assert t.trusts("\0abstract")
    assert tl("").trusts("")            # even with an empty list


def test_a_peer_string_that_is_no_address_is_not_trusted():
    t = tl("127.0.0.1")
    for peer in ("localhost", "127.0.0.1:80", "sock", "1.2.3.4 ", None, 3):
        assert not t.trusts(peer), peer


def test_trusts_ip_never_takes_a_string_for_a_unix_socket():
    t = tl("127.0.0.1, 10.0.0.0/8")
    assert not t.trusts_ip("") and not t.trusts_ip("/run/x.sock")
    assert t.trusts_ip("10.1.1.1") and t.trusts_ip("::ffff:127.0.0.1")
    assert tl("*").trusts_ip("anything")


def test_repr_shows_the_entries():
    assert repr(tl("127.0.0.1, ::1")) == "TrustList('127.0.0.1,::1')"


# --- client_from_forwarded() ------------------------------------------------------------------

LOCAL = tl("127.0.0.1, ::1, 10.0.0.0/8")


def xff(*values, trust=LOCAL):
    return client_from_forwarded(list(values), [], trust)


def fwd(*values, trust=LOCAL):
    return client_from_forwarded([], list(values), trust)


def test_no_headers_name_no_client():
    assert client_from_forwarded([], [], LOCAL) is None
    assert xff("") is None and xff(" , ") is None and fwd("") is None


def test_the_right_most_untrusted_address_is_the_client():
    assert xff("203.0.113.5, 10.0.0.7") == ("203.0.113.5", None)
    assert xff("203.0.113.5") == ("203.0.113.5", None)


def test_a_client_supplied_left_part_is_not_believed():
    # The client sent "X-Forwarded-For: 6.6.6.6"; the proxy appended what it saw.
    assert xff("6.6.6.6, 198.51.100.20, 10.0.0.7") == ("198.51.100.20", None)
    assert xff("6.6.6.6, 127.0.0.1, 198.51.100.20") == ("198.51.100.20", None)


def test_field_lines_are_read_in_order_as_one_list():
    assert xff("6.6.6.6", "198.51.100.20, 10.0.0.1") == ("198.51.100.20", None)
    assert xff("198.51.100.20, 10.0.0.1", "6.6.6.6") == ("6.6.6.6", None)


def test_when_every_hop_is_trusted_none_is_named_and_the_left_most_is_never_taken():
    assert xff("10.1.1.1, 10.2.2.2, 127.0.0.1") is None
    # 10.1.1.1 is a trusted proxy: the client is the address it says it received from
    assert xff("203.0.113.9, 10.1.1.1, 127.0.0.1") == ("203.0.113.9", None)
    assert xff("6.6.6.6, 203.0.113.9, 10.1.1.1") == ("203.0.113.9", None)


def test_with_a_star_list_only_the_right_most_hop_is_read():
    everyone = tl("*")
    assert xff("6.6.6.6, 198.51.100.20", trust=everyone) == ("198.51.100.20", None)
    assert xff("6.6.6.6, unknown", trust=everyone) is None
    assert fwd("for=6.6.6.6, for=_hidden", trust=everyone) is None


def test_xff_entries_may_carry_ports_and_ipv6_may_be_bare_or_bracketed():
    assert xff("203.0.113.5:5678") == ("203.0.113.5", 5678)
    assert xff("[2001:db8::1]:80") == ("2001:db8::1", 80)
    assert xff("[2001:db8::1]") == ("2001:db8::1", None)
    assert xff("2001:db8::1") == ("2001:db8::1", None)
    assert xff("::ffff:203.0.113.5") == ("::ffff:203.0.113.5", None)


def test_ports_are_checked():
    assert xff("203.0.113.5:0") == ("203.0.113.5", 0)
    assert xff("203.0.113.5:65535") == ("203.0.113.5", 65535)
    for bad in ("203.0.113.5:65536", "203.0.113.5:", "203.0.113.5:+80", "203.0.113.5:-1",
                "203.0.113.5:123456", "[2001:db8::1]:x", "[2001:db8::1]80", "[203.0.113.5]:80"):
        assert xff(bad) is None, bad


def test_unknown_and_garbage_hops_stop_the_walk():
    assert xff("unknown") is None
    assert xff("198.51.100.20, unknown, 10.0.0.1") is None
    assert xff("example.com, 10.0.0.1") is None
    assert xff('"203.0.113.5"') is None
    assert xff("[2001:db8::1") is None


def test_an_unknown_hop_left_of_the_client_does_not_matter():
    assert xff("unknown, 198.51.100.20, 10.0.0.1") == ("198.51.100.20", None)
    assert fwd("for=_x, for=198.51.100.20, for=10.0.0.1") == ("198.51.100.20", None)


def test_a_trusted_proxy_may_be_listed_with_a_port():
    assert xff("198.51.100.20, 10.0.0.1:4000") == ("198.51.100.20", None)
    assert xff("198.51.100.20:1, [::1]:4000") == ("198.51.100.20", 1)


def test_forwarded_for_quoted_ipv6_with_port():
    assert fwd('for="[2001:db8:cafe::17]:4711"') == ("2001:db8:cafe::17", 4711)
    assert fwd('For="[2001:db8:cafe::17]"') == ("2001:db8:cafe::17", None)


def test_forwarded_elements_have_other_parameters_and_case_insensitive_names():
    value = 'for=6.6.6.6, by=10.0.0.1;FOR=198.51.100.20;proto=https, for=10.0.0.1;host=x.com'
    assert fwd(value) == ("198.51.100.20", None)


def test_forwarded_quoted_strings_may_hold_commas_semicolons_and_escapes():
    assert fwd('for=198.51.100.20;host="a,b;c", for=10.0.0.1') == ("198.51.100.20", None)
    assert fwd(r'for="\[2001:db8::1\]:80"') == ("2001:db8::1", 80)


def test_forwarded_obfuscated_identifiers_stop_the_walk():
    assert fwd("for=_hidden") is None
    assert fwd("for=unknown") is None
    assert fwd("for=UNKNOWN, for=10.0.0.1") is None
    assert fwd('for="_gazonk", for=10.0.0.1') is None


def test_forwarded_obfuscated_port_keeps_the_host():
    assert fwd('for="198.51.100.20:_port9"') == ("198.51.100.20", None)


def test_a_forwarded_element_without_one_for_is_an_unknown_hop():
    assert fwd("for=198.51.100.20, proto=https") is None
    assert fwd("for=198.51.100.20, for=6.6.6.6;for=10.0.0.1") is None
    assert fwd("for=198.51.100.20;for=10.0.0.1") is None


def test_malformed_forwarded_elements_are_unknown_hops():
    for bad in ("for", "for=", "=1.2.3.4", "for=1.2.3.4 x", 'for="1.2.3.4', "for=[::1]",
                "for 198.51.100.20", "for=1.2.3.4;;x"):
        assert fwd(f"for=198.51.100.20, {bad}") is None, bad


def test_empty_forwarded_elements_and_pairs_are_skipped():
    assert fwd("for=198.51.100.20;;proto=http, , for=10.0.0.1,") == ("198.51.100.20", None)


def test_both_headers_agreeing_give_the_forwarded_answer():
    got = client_from_forwarded(["198.51.100.20, 10.0.0.1"],
                                ['for="198.51.100.20:5000", for=10.0.0.1'], LOCAL)
    assert got == ("198.51.100.20", 5000)


def test_both_headers_disagreeing_give_no_client():
    # The proxy appended to X-Forwarded-For; the client forged Forwarded (or the reverse).
    assert client_from_forwarded(["198.51.100.20, 10.0.0.1"], ["for=6.6.6.6"], LOCAL) is None
    assert client_from_forwarded(["6.6.6.6"], ["for=198.51.100.20, for=10.0.0.1"], LOCAL) is None
    assert client_from_forwarded(["198.51.100.20"], ["for=unknown"], LOCAL) is None


def test_an_empty_header_does_not_count_as_present():
    assert client_from_forwarded(["198.51.100.20"], [""], LOCAL) == ("198.51.100.20", None)
    assert client_from_forwarded([" "], ["for=198.51.100.20"], LOCAL) == ("198.51.100.20", None)


# --- X-Forwarded-For as Uvicorn reads it (-k uvicorn.workers.UvicornWorker) -------------------

UVICORN_CASES = [  # (trusted list, X-Forwarded-For, the client Uvicorn names or None: the peer)
    ("127.0.0.1", "203.0.113.7", ("203.0.113.7", 0)),
    ("127.0.0.1", "6.6.6.6, 203.0.113.7, 127.0.0.1", ("203.0.113.7", 0)),
    ("127.0.0.1,::1", "127.0.0.1, ::1", ("127.0.0.1", 0)),  # all trusted: the left-most
    ("127.0.0.1", "127.0.0.1, ::1", ("::1", 0)),
    ("127.0.0.1,::1", "10.9.9.9, ::1, 127.0.0.1", ("10.9.9.9", 0)),
    ("127.0.0.1", "6.6.6.6, unknown", ("unknown", 0)),  # not an address, still the client
    ("127.0.0.1", "6.6.6.6, ", None),  # an empty last entry: the peer stays
    ("127.0.0.1", "", None),
    ("127.0.0.1", "203.0.113.7:4711", ("203.0.113.7", 4711)),
    ("127.0.0.1", "203.0.113.7:http", ("203.0.113.7:http", 0)),
    ("127.0.0.1", "[2001:db8::1]:4711", ("2001:db8::1", 4711)),
    ("127.0.0.1", "[2001:db8::1]", ("2001:db8::1", 0)),
    ("127.0.0.1", "[2001:db8::1]x", ("[2001:db8::1]x", 0)),
    ("127.0.0.1", "[2001:db8::1", ("[2001:db8::1", 0)),
    ("127.0.0.1", "2001:db8::1", ("2001:db8::1", 0)),
    ("10.0.0.0/8,127.0.0.1", "203.0.113.7,10.1.2.3 ,\t127.0.0.1", ("203.0.113.7", 0)),
    ("*", "6.6.6.6, 203.0.113.7", ("6.6.6.6", 0)),  # with '*' the left-most
    ("*", ", 203.0.113.7", None),
]


@pytest.mark.parametrize(("trusted", "xff", "client"), UVICORN_CASES)
def test_the_client_as_uvicorn_names_it(trusted, xff, client):
    assert client_as_uvicorn(xff, tl(trusted)) == client


@pytest.mark.parametrize(("trusted", "xff", "client"), UVICORN_CASES)
def test_the_client_as_uvicorn_agrees_with_uvicorns_own_code(trusted, xff, client):
    """The same cases through Uvicorn's ProxyHeadersMiddleware, when it is installed: as
    UvicornWorker sets it up under Gunicorn (forwarded_allow_ips as Gunicorn's list)."""
    proxy_headers = pytest.importorskip("uvicorn.middleware.proxy_headers")
    seen = {}

    async def app(scope, receive, send):
        seen["client"] = scope["client"]

    peer = ("127.0.0.1", 50000)
    middleware = proxy_headers.ProxyHeadersMiddleware(
        app, trusted_hosts=[e.strip() for e in trusted.split(",")])
    scope = {"type": "http", "client": peer, "headers": [(b"x-forwarded-for", xff.encode())]}
    asyncio.run(middleware(scope, None, None))
    assert seen["client"] == (client or peer)
