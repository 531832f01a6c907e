"""Hostile servers and hostile stdin: one deadline per URL (connect, headers, body, trailers), malformed responses
and URLs as `download_failed`, redirects to http(s) only, server text escaped; path lists on stdin read in linear
time and bounded memory, a path longer than the system allows as one failure record, a leading BOM ignored.

Servers listen on 127.0.0.1 only; every scripted response ends by itself within a few seconds (or when the
client goes away), and the accept loop stops with the test.
"""

from __future__ import annotations

import io
import os
import socket
import threading
import time
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from resnet_cli.inputs import net
from resnet_cli.core.errors import InputError
from resnet_cli.inputs.sources import expand, read_paths

OK = "ok"
DEADLINE_S = 1.0  # URL_TIMEOUT_S in these tests
SLACK_S = 2.0  # a loaded machine's scheduling, on top of the deadline
SCRIPT_LIMIT_S = 6.0  # no scripted response runs longer than this, client or not


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


PNG = _png()


# ---- a scriptable server --------------------------------------------------------------------------------

def _send(conn: socket.socket, data: bytes) -> bool:
    try:
        conn.sendall(data)
        return True
    except OSError:  # the client went away (cut off by its deadline): the script ends
        return False


def _trickle(conn: socket.socket, data: bytes, every: float) -> None:
    end = time.monotonic() + SCRIPT_LIMIT_S
    for i in range(len(data)):
        if time.monotonic() > end or not _send(conn, data[i:i + 1]):
            return
        time.sleep(every)


def _slow_headers(conn):  # one byte every 0.2 s, the status line included: every read succeeds, the whole does not
    _trickle(conn, b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nX-Padding: " + b"a" * 100 + b"\r\n\r\n", 0.2)


def _slow_body(conn):
    _send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
    _trickle(conn, b"x" * 100, 0.2)


def _endless_trailers(conn):  # a complete chunked body, then trailer lines without end
    if not _send(conn, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n"):
        return
    end = time.monotonic() + SCRIPT_LIMIT_S
    while time.monotonic() < end and _send(conn, b"X-Trailer: more\r\n" * 64):
        time.sleep(0.001)


def _endless_continue(conn):  # "100 Continue" interim responses without end: the final status never comes
    end = time.monotonic() + SCRIPT_LIMIT_S
    while time.monotonic() < end and _send(conn, b"HTTP/1.1 100 Continue\r\n\r\n"):
        time.sleep(0.01)


def _silent(conn):  # accepts, then says nothing
    time.sleep(SCRIPT_LIMIT_S / 2)


def _fixed(response: bytes) -> Callable[[socket.socket], None]:
    def play(conn: socket.socket) -> None:
        port = conn.getsockname()[1]
        _send(conn, response.replace(b"{port}", b"%d" % port).replace(b"{port+65536}", b"%d" % (port + 65536)))
    return play


def _chunked(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body


SCRIPTS: dict[str, Callable[[socket.socket], None]] = {
    "/photo.png": _fixed(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(PNG), PNG)),
    "/chunked.png": _fixed(_chunked(b"%x\r\n%s\r\n0\r\nX-Trailer: ok\r\n\r\n" % (len(PNG), PNG))),
    "/slow-headers.png": _slow_headers,
    "/slow-body.png": _slow_body,
    "/endless-trailers.png": _endless_trailers,
    "/endless-continue.png": _endless_continue,
    "/silent.png": _silent,
    "/bad-status.png": _fixed(b"HTTP/1.1 abc Nonsense\r\n\r\n"),
    "/not-http.png": _fixed(b"SSH-2.0-OpenSSH_9.6\r\n"),
    "/status-1000.png": _fixed(b"HTTP/1.1 1000 Too Big\r\nContent-Length: 0\r\n\r\n"),
    "/200-headers.png": _fixed(b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(200))
                               + b"Content-Length: 0\r\n\r\n"),
    "/long-header.png": _fixed(b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n"),
    "/bad-chunk.png": _fixed(_chunked(b"zz\r\nhello\r\n0\r\n\r\n")),
    "/huge-chunk.png": _fixed(_chunked(b"ffffffffffffffffffff\r\nhello")),
    "/short-body.png": _fixed(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + PNG[:40]),
    "/escape-reason.png": _fixed(b"HTTP/1.1 404 \x1b[2J\x1b]0;owned\x07Gone\r\nContent-Length: 0\r\n\r\n"),
    "/escape-status.png": _fixed(b"HTTP/1.1 2\x1b[31m00 OK\r\n\r\n"),
}
REDIRECTS = {
    "/to-photo.png": "/photo.png",
    "/to-ftp.png": "ftp://127.0.0.1:{port}/photo.png",  # this server: were it followed, it would be seen
    "/to-file.png": "file:///etc/passwd",
    "/to-data.png": "data:image/png;base64,iVBORw0KGgo=",
    "/to-gopher.png": "gopher://127.0.0.1:{port}/x",
    "/to-bad-port.png": "http://127.0.0.1:{port+65536}/photo.png",  # not this server's port, modulo 65536
    "/to-bad-ipv6.png": "http://[::1/photo.png",
    "/to-self.png": "/to-self.png",
}
for _path, _target in REDIRECTS.items():
    SCRIPTS[_path] = _fixed(b"HTTP/1.1 302 Found\r\nLocation: %s\r\nContent-Length: 0\r\n\r\n" % _target.encode())


class ScriptedServer:
    """A 127.0.0.1 server: each connection's request head is read, then the script for its path is played
    (`fixed` overrides them all, for the fuzz test) and the connection is closed."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.fixed: bytes | None = None
        self.requests: list[str] = []
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> "ScriptedServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        self.connections += 1
        with conn:
            conn.settimeout(SCRIPT_LIMIT_S)
            head = b""
            try:
                while b"\r\n\r\n" not in head and len(head) < 65536:
                    data = conn.recv(4096)
                    if not data:
                        return
                    head += data
            except OSError:
                return
            path = head.split(b" ", 2)[1].decode("latin-1") if head.count(b" ") >= 2 else "/"
            self.requests.append(path)
            if self.fixed is not None:
                _send(conn, self.fixed)
            else:
                SCRIPTS.get(path, _fixed(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"))(conn)
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setattr(net, "URL_TIMEOUT_S", DEADLINE_S)
    with ScriptedServer() as srv:
        yield srv


def _fetch(url: str) -> tuple[str, str, float]:
    """(kind or "ok", message, seconds taken) of fetching `url` as a URL input."""
    t0 = time.monotonic()
    try:
        net.fetch_image_bytes(url)
        kind, message = OK, ""
    except InputError as exc:
        kind, message = exc.kind, exc.message
    return kind, message, time.monotonic() - t0


# ---- one deadline per URL -------------------------------------------------------------------------------

@pytest.mark.timeout(30)
@pytest.mark.parametrize("path", ["/slow-headers.png", "/slow-body.png", "/endless-trailers.png",
                                  "/endless-continue.png", "/silent.png"])
def test_a_url_that_never_finishes_is_a_timeout_within_the_deadline(server, path):
    kind, message, took = _fetch(server.url + path)
    assert kind == "timeout", message
    assert f"{DEADLINE_S:g} s" in message
    assert took < DEADLINE_S + SLACK_S


@pytest.mark.timeout(30)
@pytest.mark.parametrize("path", ["/bad-status.png", "/not-http.png", "/status-1000.png", "/200-headers.png",
                                  "/long-header.png", "/bad-chunk.png", "/huge-chunk.png", "/short-body.png"])
def test_a_malformed_response_is_download_failed(server, path):
    kind, message, took = _fetch(server.url + path)
    assert kind == "download_failed", message
    assert message and "\n" not in message and len(message) < 400
    assert took < DEADLINE_S + SLACK_S


@pytest.mark.timeout(30)
@pytest.mark.parametrize("url", ["http://127.0.0.1:99999/photo.png", "http://127.0.0.1:0/photo.png",
                                 "http://127.0.0.1:port/photo.png", "http://[::1/photo.png",
                                 "http:///photo.png", "{server}/a photo.png", "{server}/a\tphoto.png",
                                 "{server}/photo.png\x1b[2J"])
def test_an_invalid_url_is_download_failed(server, url):
    kind, message, _ = _fetch(url.format(server=server.url))
    assert kind == "download_failed", message
    assert "\x1b" not in message and "\t" not in message


@pytest.mark.timeout(30)
def test_a_url_with_non_ascii_characters_is_sent_percent_encoded(server):
    """As a browser sends it: the server sees UTF-8 percent-encoded, and answers (here: a 404 it logged)."""
    kind, message, _ = _fetch(server.url + "/café.png?q=é")
    assert kind == "download_failed" and "404" in message
    assert server.requests[-1] == "/caf%C3%A9.png?q=%C3%A9"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("path", ["/to-ftp.png", "/to-file.png", "/to-data.png", "/to-gopher.png",
                                  "/to-bad-port.png", "/to-bad-ipv6.png", "/to-self.png"])
def test_a_redirect_goes_to_http_urls_only(server, path):
    kind, message, _ = _fetch(server.url + path)
    assert kind == "download_failed", message
    assert "\n" not in message
    if path != "/to-self.png":
        assert server.connections == 1  # the redirect's target was never contacted


@pytest.mark.timeout(30)
def test_a_redirect_to_http_is_followed(server):
    assert _fetch(server.url + "/to-photo.png")[0] == OK
    assert server.requests[-2:] == ["/to-photo.png", "/photo.png"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("path", ["/escape-reason.png", "/escape-status.png"])
def test_server_text_in_a_message_is_escaped(server, path):
    kind, message, _ = _fetch(server.url + path)
    assert kind == "download_failed"
    assert "\x1b" not in message and "\x07" not in message
    assert "\\x1b[" in message  # shown, not obeyed


@pytest.mark.timeout(30)
def test_a_weights_download_from_a_server_that_never_finishes_its_headers_times_out(server, tmp_path):
    dest = tmp_path / "w.pth"
    t0 = time.monotonic()
    with pytest.raises(net.NetworkError) as exc:
        net.download(server.url + "/slow-headers.png", dest, sha256_prefix=None, timeout=DEADLINE_S)
    assert exc.value.kind == "timeout"
    assert time.monotonic() - t0 < DEADLINE_S + SLACK_S
    assert not dest.exists() and list(tmp_path.iterdir()) == []  # no partial file left behind
    with pytest.raises(net.NetworkError) as exc:
        net.download(server.url + "/bad-chunk.png", dest, sha256_prefix=None, timeout=DEADLINE_S)
    assert exc.value.kind == "download_failed"
    net.download(server.url + "/chunked.png", dest, sha256_prefix=None, timeout=DEADLINE_S)
    assert dest.read_bytes() == PNG


HOSTILE = {  # path -> the failure it must give
    "/slow-headers.png": "timeout", "/endless-trailers.png": "timeout", "/bad-status.png": "download_failed",
    "/200-headers.png": "download_failed", "/bad-chunk.png": "download_failed", "/slow-body.png": "timeout",
    "/to-ftp.png": "download_failed",
}


@pytest.mark.timeout(120)
def test_a_hostile_url_fails_in_its_place_and_the_next_input_is_classified(server, checkpoint, cli, tmp_path):
    local = tmp_path / "local.png"
    local.write_bytes(PNG)
    args: list[str] = []
    expected: list[str] = []
    for path, kind in HOSTILE.items():
        args += [server.url + path, str(local)]
        expected += [kind, OK]
    args += [server.url + "/chunked.png"]
    expected += [OK]
    res = cli(*args, "-a", "resnet18", "-w", checkpoint("resnet18"), "-f", "jsonl", "-k", "1")
    recs = res.jsonl()
    assert [r["path"] for r in recs] == args
    assert [r.get("error", {}).get("type", OK) for r in recs] == expected
    assert res.code == 1
    assert "internal_error" not in res.stderr


# ---- the fuzz test: random and mutated response heads -----------------------------------------------------

_STATUS = [b"HTTP/1.1 200 OK", b"HTTP/1.0 200 OK", b"HTTP/1.1 302 Found", b"HTTP/1.1 301 Moved",
           b"HTTP/1.1 100 Continue", b"HTTP/1.1 404 Not Found", b"HTTP/1.1 200", b"HTTP/2 200", b"HTTP/1.1 99 Low",
           b"HTTP/1.1 200 \x1b[2J", b"ICY 200 OK", b"", b"HTTP/1.1 -1 X", b"HTTP/1.1 2OO OK"]
_HEADER_NAMES = [b"Content-Length", b"Transfer-Encoding", b"Location", b"Content-Type", b"Connection",
                 b"Content-Encoding", b"X-Junk", b" Folded", b"", b"Content-Length "]
_VALUES = [b"chunked", b"gzip, chunked", b"identity", b"0", b"5", b"-1", b"99999999999999999999", b"1e3", b"0x10",
           b"close", b"keep-alive", b"image/png", b"\x00\xff", b"\xe9t\xe9", b"/photo.png", b"photo.png",
           b"http://127.0.0.1:1/", b"ftp://127.0.0.1/", b"file:///etc/passwd", b"http://[::1/", b"//127.0.0.1/x",
           b"http://127.0.0.1:99999/", b""]
_BODIES = [b"", PNG[:64], b"5\r\nhello\r\n0\r\n\r\n", b"5\r\nhello\r\n0\r\nX-T: 1\r\n", b"zz\r\n\r\n",
           b"ffffffffffffffffffff\r\nx", b"5;ext=1\r\nhello\r\n0\r\n\r\n", b"-5\r\nhello\r\n", b"\r\n\r\n\r\n"]


def _mostly(common: st.SearchStrategy, rare: st.SearchStrategy) -> st.SearchStrategy:
    """`common` nine times in ten: the parser gets past a first line that is mostly right, to the headers."""
    return st.integers(0, 9).flatmap(lambda n: rare if n == 0 else common)


@st.composite
def _responses(draw) -> bytes:
    status = draw(_mostly(st.sampled_from(_STATUS[:6]), st.sampled_from(_STATUS[6:]) | st.binary(max_size=40)))
    headers = draw(st.lists(
        _mostly(st.tuples(st.sampled_from(_HEADER_NAMES), _mostly(st.sampled_from(_VALUES), st.binary(max_size=30)))
                .map(lambda nv: nv[0] + b": " + nv[1]),
                st.binary(max_size=40)),
        max_size=12))
    eol = draw(_mostly(st.just(b"\r\n"), st.sampled_from([b"\n", b"\r"])))
    body = draw(_mostly(st.sampled_from(_BODIES), st.binary(max_size=80)))
    response = bytearray(eol.join([status, *headers]) + eol + eol + body)
    for _ in range(draw(_mostly(st.integers(0, 1), st.integers(2, 6)))):  # byte mutations
        if not response:
            break
        at = draw(st.integers(0, len(response) - 1))
        op = draw(st.sampled_from(["flip", "delete", "insert", "cut", "repeat"]))
        if op == "flip":
            response[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "delete":
            del response[at]
        elif op == "insert":
            response[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "cut":
            del response[at:]
        else:
            response[at:at] = response[at:at + draw(st.integers(1, 64))] * draw(st.integers(1, 20))
    return bytes(response)


@pytest.mark.timeout(240)
def test_fuzzed_response_heads_give_a_typed_failure_and_never_hang(monkeypatch):
    """Whatever a server answers, a URL input gives bytes or a typed InputError within its deadline. A redirect
    never leaves this machine: only 127.0.0.1 resolves while the test runs."""
    real_getaddrinfo = socket.getaddrinfo

    def loopback_only(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost"):
            raise socket.gaierror(socket.EAI_NONAME, "only 127.0.0.1 in this test")
        return real_getaddrinfo("127.0.0.1", *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)
    monkeypatch.setattr(net, "URL_TIMEOUT_S", DEADLINE_S)
    with ScriptedServer() as srv:
        srv.fixed = b""

        @settings(max_examples=60, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(response=_responses())
        def check(response: bytes) -> None:
            srv.fixed = response
            t0 = time.monotonic()
            try:
                data = net.fetch_image_bytes(srv.url + "/photo.png")
                assert isinstance(data, bytes)
            except InputError as exc:
                assert exc.kind in ("download_failed", "timeout", "too_large"), exc.message
                assert exc.message and "\n" not in exc.message and "\x1b" not in exc.message
            assert time.monotonic() - t0 < DEADLINE_S + SLACK_S

        check()


# ---- paths on stdin ---------------------------------------------------------------------------------------

def _paths(data: bytes, null: bool = False) -> list:
    return list(expand(["-"], null_separated=null, stdin=io.BytesIO(data)))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("null", [False, True])
def test_a_path_longer_than_the_system_allows_is_one_failure_and_reading_goes_on(null):
    """40 MB without a separator: read in linear time and bounded memory (it took minutes and 40 MB copies
    when the whole buffer was split again for every 64 kB read), one record naming the problem."""
    sep = b"\0" if null else b"\n"
    data = b"before.jpg" + sep + b"a" * (40 << 20) + sep + b"after.jpg" + sep + b"b" * 5000
    sources = _paths(data, null)
    assert len(sources) == 4
    assert [s.path for s in sources[::2]] == ["before.jpg", "after.jpg"]
    assert sources[0].error is None and sources[2].error is None
    for long, size in ((sources[1], 40 << 20), (sources[3], 5000)):
        assert long.error is not None and long.error.kind == "not_found"
        assert f"{size:,} bytes" in long.error.message and "longer than" in long.error.message
        assert len(long.path) < 200 and long.path.startswith(("aaaa", "bbbb"))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("null", [False, True])
def test_paths_up_to_the_system_limit_are_read_whole(null):
    limit = os.pathconf("/", "PC_PATH_MAX") if hasattr(os, "pathconf") else 4096
    sep = b"\0" if null else b"\n"
    longest = b"/" + b"d/" * ((limit - 10) // 2) + b"x.jpg"
    assert len(longest) < limit
    sources = _paths(longest + sep + longest + b"y" * (limit - len(longest)), null)
    assert sources[0].path == os.fsdecode(longest) and sources[0].error is None
    assert sources[1].error is not None and sources[1].error.kind == "not_found"


def test_paths_split_across_reads_are_whole():
    """A pipe gives what it holds: a path may arrive in pieces, a CR LF split between two reads."""

    class Pipe(io.RawIOBase):
        def __init__(self, pieces):
            self.pieces = list(pieces)

        def readable(self):
            return True

        def read1(self, n=-1):
            return self.pieces.pop(0) if self.pieces else b""

    pieces = [b"\xef", b"\xbb", b"\xbfone", b".jpg\r", b"\n", b"tw", b"o.jpg\r\n\r\n", b"three.jpg"]
    assert list(read_paths(Pipe(pieces))) == ["one.jpg", "two.jpg", "three.jpg"]


@pytest.mark.parametrize("null", [False, True])
def test_a_byte_order_mark_before_the_first_path_on_stdin_is_ignored(null):
    sep = b"\0" if null else b"\r\n"
    data = b"\xef\xbb\xbfphotos/cat.jpg" + sep + b"\xef\xbb\xbfsecond.jpg" + sep
    # only the stream's first three bytes are a BOM; one before a later path is part of that name
    assert [s.path for s in _paths(data, null)] == ["photos/cat.jpg", "\ufeffsecond.jpg"]
    assert _paths(b"\xef\xbb\xbf" + sep + b"x.jpg", null)[0].path == "x.jpg"  # a BOM alone is a blank line
    assert _paths(b"\xef\xbb\xbf", null) == []


@pytest.mark.timeout(120)
def test_stdin_with_a_bom_and_a_path_too_long_still_classifies_the_others(checkpoint, cli, tmp_path):
    photo = tmp_path / "red.png"
    photo.write_bytes(PNG)
    for null in (False, True):
        sep = b"\0" if null else b"\n"
        stdin = b"\xef\xbb\xbf" + bytes(photo) + sep + b"z" * (1 << 20) + sep + bytes(photo) + sep
        res = cli("-", *(["-0"] if null else []), "-a", "resnet18", "-w", checkpoint("resnet18"),
                  "-f", "jsonl", "-k", "1", stdin=stdin)
        recs = res.jsonl()
        assert len(recs) == 3 and res.code == 1
        assert recs[0]["path"] == recs[2]["path"] == str(photo) and "topk" in recs[0] and "topk" in recs[2]
        assert recs[1]["error"]["type"] == "not_found" and "1,048,576 bytes" in recs[1]["error"]["message"]
        assert "Traceback" not in res.stderr
