"""workspace_ip: the workspace name -> loopback address mapping.

The C shim (preload/workspace_net.c) implements the same function; the
integration test tests/integration/test_preload_resolver.py compares the two on real
sockets for 1,000+ names. Here the Python side is pinned to literal values.
"""

import pytest

from cmux_gevent.workspace import (
    InvalidWorkspace,
    fnv1a_32,
    workspace_ip,
    workspace_number,
)


@pytest.mark.parametrize(
    "name, ip",
    [
        ("workspace-1", "127.18.0.1"),
        ("workspace-2", "127.18.0.2"),
        ("workspace-255", "127.18.0.255"),
        ("workspace-256", "127.18.1.0"),
        ("workspace-65535", "127.18.255.255"),
        # Only the low 16 bits of the number are used.
        ("workspace-65536", "127.18.0.0"),
        ("workspace-65791", "127.18.0.255"),
        ("workspace-4294967295", "127.18.255.255"),
        # Leading zeros and huge-but-small-valued digit strings.
        ("workspace-007", "127.18.0.7"),
        ("workspace-" + "0" * 40 + "513", "127.18.2.1"),
        # Any trailing digits count, not only after "workspace-".
        ("ws12", "127.18.0.12"),
        ("0", "127.18.0.0"),
        ("4294967295", "127.18.255.255"),
    ],
)
def test_numeric_names(name, ip):
    assert workspace_ip(name) == ip


@pytest.mark.parametrize(
    "name, ip",
    [
        # Published FNV-1a 32 test vectors: fnv1a("a") = 0xe40c292c,
        # fnv1a("foobar") = 0xbf9cf968, fnv1a("") = 0x811c9dc5 (the basis).
        ("a", "127.18.41.44"),
        ("foobar", "127.18.249.104"),
        ("", "127.18.157.197"),
        # Literal values, cross-checked with the C shim.
        ("workspace-a", "127.18.176.32"),
        ("workspace-abc", "127.18.38.95"),
        ("workspace-é", "127.18.195.221"),
    ],
)
def test_hashed_names(name, ip):
    assert workspace_ip(name) == ip


def test_fnv_test_vectors():
    assert fnv1a_32(b"") == 0x811C9DC5
    assert fnv1a_32(b"a") == 0xE40C292C
    assert fnv1a_32(b"foobar") == 0xBF9CF968


def test_hash_is_ascii_case_insensitive():
    assert workspace_ip("Workspace-A") == workspace_ip("workspace-a") == "127.18.176.32"
    assert workspace_ip("WORKSPACE-ABC") == "127.18.38.95"
    # Only ASCII is folded (the C shim lowercases in the C locale).
    assert workspace_ip("WORKSPACE-É") == workspace_ip("workspace-É")
    assert workspace_ip("workspace-É") != workspace_ip("workspace-é")


@pytest.mark.parametrize(
    "name, same_as",
    [
        ("/root/workspace-9", "workspace-9"),
        ("a/b/workspace-9", "workspace-9"),
        ("a/b/workspace-abc", "workspace-abc"),
        ("workspace-1/workspace-2", "workspace-2"),
        ("/root/workspace-a", "workspace-a"),
    ],
)
def test_only_last_component_counts(name, same_as):
    assert workspace_ip(name) == workspace_ip(same_as)


def test_digits_in_earlier_components_do_not_count():
    assert workspace_ip("workspace-7/abc") == workspace_ip("abc")
    assert workspace_ip("workspace-7/abc") != "127.18.0.7"


def test_empty_trailing_component_hashes_the_empty_string():
    assert workspace_ip("workspace-3/") == "127.18.157.197"
    assert workspace_ip("/") == workspace_ip("") == "127.18.157.197"


@pytest.mark.parametrize(
    "name",
    [
        "workspace-4294967296",
        "workspace-99999999999999999999",
        "/root/workspace-" + "9" * 100,
        "4294967296",
    ],
)
def test_overflow_is_invalid(name):
    with pytest.raises(InvalidWorkspace):
        workspace_ip(name)
    with pytest.raises(ValueError):  # InvalidWorkspace is a ValueError
        workspace_number(name)


def test_overflow_only_in_last_component():
    assert workspace_ip("workspace-99999999999/workspace-1") == "127.18.0.1"


def test_non_ascii_digits_are_not_digits():
    # Arabic-indic digit one: not an ASCII digit, so the name is hashed.
    name = "workspace-\u0661"
    assert workspace_number(name) == fnv1a_32(name.encode()) & 0xFFFF
    assert workspace_ip(name) != "127.18.0.1"


def test_result_is_always_in_127_18():
    for name in ["x", "workspace-1", "Z" * 1000, "😀", "workspace-4294967295"]:
        octets = [int(o) for o in workspace_ip(name).split(".")]
        assert octets[:2] == [127, 18]
        assert all(0 <= o <= 255 for o in octets)
