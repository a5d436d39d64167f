"""Request-smuggling vectors: ambiguous or malformed requests that must get a 400
with nothing forwarded. `%(port)d` in a vector stands for the upstream's port.

Data only (standard library, no pytest): test_smuggling.py runs them through the
proxy, tests/stress/compare_nginx.py through the proxy and nginx side by side.
"""


def head(*lines: bytes) -> bytes:
    return b"\r\n".join(lines) + b"\r\n\r\n"


P = b"X-Cmux-Port-Internal: %(port)d"
VECTORS = {
    "cl-and-te": head(b"POST / HTTP/1.1", P, b"Content-Length: 5", b"Transfer-Encoding: chunked")
    + b"0\r\n\r\n",
    "te-and-cl": head(b"POST / HTTP/1.1", P, b"Transfer-Encoding: chunked", b"Content-Length: 5")
    + b"0\r\n\r\n",
    "two-content-lengths": head(b"POST / HTTP/1.1", P, b"Content-Length: 5", b"Content-Length: 6")
    + b"hello!",
    "content-length-list": head(b"POST / HTTP/1.1", P, b"Content-Length: 5, 6") + b"hello!",
    "content-length-plus": head(b"POST / HTTP/1.1", P, b"Content-Length: +5") + b"hello",
    "te-chunked-identity": head(b"POST / HTTP/1.1", P, b"Transfer-Encoding: chunked, identity")
    + b"0\r\n\r\n",
    "te-xchunked": head(b"POST / HTTP/1.1", P, b"Transfer-Encoding: xchunked") + b"0\r\n\r\n",
    "te-identity": head(b"POST / HTTP/1.1", P, b"Transfer-Encoding: identity") + b"0\r\n\r\n",
    "te-gzip-chunked": head(b"POST / HTTP/1.1", P, b"Transfer-Encoding: gzip, chunked")
    + b"0\r\n\r\n",
    "te-twice": head(
        b"POST / HTTP/1.1", P, b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"
    )
    + b"0\r\n\r\n",
    "te-obs-fold": head(b"POST / HTTP/1.1", P, b"Transfer-Encoding:", b" chunked") + b"0\r\n\r\n",
    "te-obs-fold-after": head(b"POST / HTTP/1.1", P, b"Transfer-Encoding: chunked", b" identity")
    + b"0\r\n\r\n",
    "te-trailing-space": head(b"POST / HTTP/1.1", P, b"Transfer-Encoding: chunked ") + b"0\r\n\r\n",
    "te-vertical-tab": head(b"POST / HTTP/1.1", P, b"Transfer-Encoding: \x0bchunked")
    + b"0\r\n\r\n",
    "te-space-before-colon": head(b"POST / HTTP/1.1", P, b"Transfer-Encoding : chunked")
    + b"0\r\n\r\n",
    "te-leading-space-name": head(b"POST / HTTP/1.1", b" Transfer-Encoding: chunked", P)
    + b"0\r\n\r\n",
    "bare-lf-everywhere": b"GET / HTTP/1.1\nX-Cmux-Port-Internal: %(port)d\n\n",
    "bare-lf-one-header": b"GET / HTTP/1.1\r\nX-Cmux-Port-Internal: %(port)d\nX: y\r\n\r\n",
    "bare-lf-terminator": b"GET / HTTP/1.1\r\nX-Cmux-Port-Internal: %(port)d\r\n\n",
    "bare-cr": b"GET / HTTP/1.1\r\nX-Cmux-Port-Internal: %(port)d\rX: y\r\n\r\n",
    "nul-in-value": head(b"GET / HTTP/1.1", P, b"X: a\x00b"),
    "cr-in-value": head(b"GET / HTTP/1.1", P, b"X: a\rb"),
    "lf-in-value": head(b"GET / HTTP/1.1", P, b"X: a\nb"),
    "ctl-in-value": head(b"GET / HTTP/1.1", P, b"X: a\x01b"),
    "space-before-colon": head(b"GET / HTTP/1.1", P, b"Host : a"),
    "tab-before-colon": head(b"GET / HTTP/1.1", P, b"Host\t: a"),
    "empty-header-name": head(b"GET / HTTP/1.1", P, b": a"),
    "two-hosts": head(b"GET / HTTP/1.1", P, b"Host: a", b"Host: b"),
    "version-1.2": head(b"GET / HTTP/1.2", P),
    "version-2.0": head(b"GET / HTTP/2.0", P),
    "version-3.1": head(b"GET / HTTP/3.1", P),
    "version-0.9": head(b"GET / HTTP/0.9", P),
    "version-lowercase": head(b"GET / http/1.1", P),
    "version-absent": b"GET /\r\n" + P + b"\r\n\r\n",
    "absolute-form-foreign": head(b"GET http://example.com/ HTTP/1.1", P),
    "absolute-form-foreign-port": head(b"GET http://127.0.0.1:%(port)d/ HTTP/1.1", P),
    "authority-form-get": head(b"GET example.com:80 HTTP/1.1", P),
    "asterisk-get": head(b"GET * HTTP/1.1", P),
}


CHUNKED_HEAD = head(b"POST /upload HTTP/1.1", P, b"Transfer-Encoding: chunked")
BAD_CHUNKS = {
    "size-overflow": b"1ffffffffffffffff\r\n" + b"A" * 64 + b"\r\n0\r\n\r\n",
    "size-plus-sign": b"+5\r\nAAAAA\r\n0\r\n\r\n",
    "size-minus-sign": b"-5\r\nAAAAA\r\n0\r\n\r\n",
    "size-0x-prefix": b"0x5\r\nAAAAA\r\n0\r\n\r\n",
    "size-trailing-space": b"5 \r\nAAAAA\r\n0\r\n\r\n",
    "size-bare-lf": b"5\nAAAAA\r\n0\r\n\r\n",
    "data-longer-than-size": b"5\r\nAAAAAAAAAA\r\n0\r\n\r\n",
    "second-chunk-bad": b"3\r\nok!\r\nzz\r\nAAAAA\r\n0\r\n\r\n",
}
