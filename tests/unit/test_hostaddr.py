"""This host's addresses from its interfaces and routes, driven with the kernel's text as input."""

from __future__ import annotations

import ipaddress

from scanxfer.hostaddr import HostAddresses, Inputs, host_addresses, read_host_addresses

# /proc/net/fib_trie of a Pi with eth0 (192.168.1.50/24), wlan0 (10.0.0.7/8) and a container
# bridge, shortened: both tables repeat the same leaves, and routes show as /0, /8 or /24.
FIB_TRIE = """\
Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 10.0.0.0/8 2 0 2
        |-- 10.0.0.0
           /8 link UNICAST
        |-- 10.0.0.7
           /32 host LOCAL
     +-- 127.0.0.0/8 2 0 2
        |-- 127.0.0.0
           /8 host LOCAL
        |-- 127.0.0.1
           /32 host LOCAL
        |-- 127.0.1.1
           /32 host LOCAL
     +-- 169.254.0.0/16 2 0 2
        |-- 169.254.3.4
           /32 host LOCAL
     +-- 192.168.1.0/24 2 0 2
        |-- 192.168.1.0
           /24 link UNICAST
        |-- 192.168.1.50
           /32 host LOCAL
        |-- 192.168.1.255
           /32 link BROADCAST
Local:
  +-- 0.0.0.0/0 3 0 5
     +-- 192.168.1.0/24 2 0 2
        |-- 192.168.1.50
           /32 host LOCAL
"""
# /proc/net/if_inet6: address, ifindex, prefix length, scope, flags, interface.
IF_INET6 = """\
00000000000000000000000000000001 01 80 10 80       lo
fe80000000000000ba27ebfffe000001 02 40 20 80     eth0
20010db8000000000000000000000050 02 40 00 80     eth0
20010db80000000011112222333344ff 02 40 00 01     eth0
20010db8000000000000000000000051 02 40 00 40     eth0
fd000000000000000000000000000002 03 40 00 80    wlan0
"""


def test_the_default_routes_source_is_primary_and_the_rest_are_listed() -> None:
    found = host_addresses(Inputs(FIB_TRIE, IF_INET6, routed=("192.168.1.50", "2001:db8::50")))
    assert found == HostAddresses("192.168.1.50", ("10.0.0.7", "2001:db8::50", "fd00::2"))


def test_loopback_link_local_temporary_and_tentative_addresses_are_left_out() -> None:
    found = host_addresses(Inputs(FIB_TRIE, IF_INET6, routed=(None, None)))
    everything = {found.primary, *found.others}
    assert not everything & {"127.0.0.1", "127.0.1.1", "169.254.3.4", "::1"}
    assert not everything & {"fe80::ba27:ebff:fe00:1", "2001:db8::1111:2222:3333:44ff"}
    assert "2001:db8::51" not in everything  # tentative: duplicate address detection pending
    assert "192.168.1.255" not in everything  # a broadcast leaf, not an address of the host


def test_without_a_default_route_the_first_address_is_primary() -> None:
    found = host_addresses(Inputs(FIB_TRIE, IF_INET6, routed=(None, None)))
    assert found.primary == "10.0.0.7"
    assert found.others == ("192.168.1.50", "2001:db8::50", "fd00::2")


def test_an_ipv6_default_route_counts_when_ipv4_has_none() -> None:
    found = host_addresses(Inputs(FIB_TRIE, IF_INET6, routed=(None, "fd00::2")))
    assert found.primary == "fd00::2"


def test_a_route_through_an_address_not_listed_is_ignored() -> None:
    """A VPN's point-to-point address, say: the kernel routes through it, senders cannot."""
    found = host_addresses(Inputs(FIB_TRIE, "", routed=("127.0.0.1", None)))
    assert found.primary == "10.0.0.7"


def test_loopback_only_has_no_primary() -> None:
    loopback_only = FIB_TRIE.split("     +-- 169.254")[0].replace("10.0.0.7", "127.0.0.2")
    found = host_addresses(Inputs(loopback_only, "", routed=(None, None)))
    assert found == HostAddresses(None, ())


def test_missing_or_garbled_files_give_no_addresses() -> None:
    assert host_addresses(Inputs("", "", (None, None))) == HostAddresses(None, ())
    garbled = Inputs("|-- not-an-address\n/32 host LOCAL\n", "zz 1 2 3 4 eth0\n", (None, None))
    assert host_addresses(garbled) == HostAddresses(None, ())


def test_of_version_keeps_one_family() -> None:
    found = HostAddresses("2001:db8::50", ("192.168.1.50", "fd00::2", "10.0.0.7"))
    assert found.of_version(4) == HostAddresses("192.168.1.50", ("10.0.0.7",))
    assert found.of_version(6) == HostAddresses("2001:db8::50", ("fd00::2",))


def test_this_host_smoke() -> None:
    """The real kernel: every address found is one a sender could dial, primary first."""
    found = read_host_addresses()
    listed = [address for address in (found.primary, *found.others) if address is not None]
    assert len(set(listed)) == len(listed)
    for text in listed:
        address = ipaddress.ip_address(text)
        assert not (address.is_loopback or address.is_link_local), text
    assert found.primary is not None or not found.others  # no others without a primary
