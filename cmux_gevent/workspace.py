"""The workspace name -> loopback IP mapping shared with the C shim.

`preload/workspace_net.c` implements the same function; a test binds real sockets
under the shim for a thousand names and compares the addresses bit for bit.
"""

FNV_OFFSET_BASIS = 0x811C9DC5
FNV_PRIME = 0x01000193
WORKSPACE_NET = "127.18"


class InvalidWorkspace(ValueError):
    """The name cannot be mapped (its trailing number does not fit in 32 bits)."""


def fnv1a_32(data: bytes) -> int:
    """FNV-1a, 32 bits, over raw bytes."""
    h = FNV_OFFSET_BASIS
    for byte in data:
        h = ((h ^ byte) * FNV_PRIME) & 0xFFFFFFFF
    return h


def workspace_number(name: str) -> int:
    """The 16-bit-relevant number of a workspace name.

    Only the last '/'-separated component counts. Trailing ASCII digits are the
    number itself (they must fit in an unsigned 32-bit integer); a name without
    them is hashed with FNV-1a over its UTF-8 bytes, ASCII-lowercased, so that
    the C shim (which lowercases with the C locale) computes the same value.
    """
    last = name.rsplit("/", 1)[-1]
    raw = last.encode("utf-8", "surrogateescape")
    stripped = raw.rstrip(b"0123456789")
    digits = raw[len(stripped) :]
    if digits:
        number = int(digits)
        if number > 0xFFFFFFFF:
            raise InvalidWorkspace(f"invalid workspace name: {name}")
        return number
    return fnv1a_32(raw.lower()) & 0xFFFF


def workspace_ip(name: str) -> str:
    """The loopback IPv4 address of workspace `name`: 127.18.(N>>8 & 255).(N & 255).

    >>> workspace_ip("workspace-1"), workspace_ip("workspace-256")
    ('127.18.0.1', '127.18.1.0')
    """
    number = workspace_number(name)
    return f"{WORKSPACE_NET}.{(number >> 8) & 0xFF}.{number & 0xFF}"
