"""The ASGI entry point (`chatvault_site.asgi` and `chatvault_site.handlers`): what every request meets first.

Body limits before any work, the Host check, request ids on every answer, safe static paths and an access log
without secrets, all against a real uvicorn process.
"""

import json
import os
import socket
import threading
import time
import uuid

import pytest

from tests.factories import make_key
from tests.fakes import HOST
from tests.gateway import Gateway, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

HUGE = 200 * 2**20
MiB = 2**20


@pytest.fixture(scope="module")
def _edge(database_url, tmp_path_factory):
    tmpdir = tmp_path_factory.mktemp("gateway-tmp")
    with Gateway.start(database_url, access_log=True, tmpdir=tmpdir) as gw:
        gw.tmpdir = tmpdir
        yield gw


@pytest.fixture
def edge(_edge):
    """Return a gateway with the access log on and a temporary directory of its own (to see what it spools)."""
    yield _edge
    _edge.wait_log_drained()


def rss_kib(pid):
    """Return the resident set size of a process in KiB."""
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


def files_open_under(pid, directory):
    """Return the files a process has open under directory (temporary files are unlinked, so list has none)."""
    fd_dir = f"/proc/{pid}/fd"
    found = []
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
        except OSError:
            continue
        if target.startswith(str(directory)):
            found.append(target)
    return found


def read_response(sock, timeout=5.0):
    """Return (status, headers, body) of one HTTP/1.1 response read from sock."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a full response head: {data!r}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin1").split("\r\n")
    headers = {name.lower(): value.strip() for name, value in (line.split(":", 1) for line in lines[1:])}
    chunked = headers.get("transfer-encoding") == "chunked"
    while not (body.endswith(b"0\r\n\r\n") if chunked else len(body) >= int(headers.get("content-length", 0))):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    if chunked:
        frames, body = body, b""
        while not frames.startswith(b"0\r\n"):
            size, frames = frames.split(b"\r\n", 1)
            body, frames = body + frames[: int(size, 16)], frames[int(size, 16) + 2 :]
    return int(lines[0].split()[1]), headers, body


def send_huge_body(gw, path, *, chunked):
    """Send a 200 MiB POST to path over a raw socket; return (status, headers, body, seconds to the answer).

    The body is sent from a thread while the answer is awaited, as a real client would; meanwhile the gateway's
    open files are sampled, so a temporary file that exists only during the upload is seen too.
    """
    sock = socket.create_connection((HOST, gw.port))
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % HUGE
    head = b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n%s\r\n\r\n"
    spooled = []

    def upload():
        block = b"x" * MiB
        frame = b"%x\r\n%s\r\n" % (len(block), block) if chunked else block
        try:
            for sent in range(HUGE // MiB):
                sock.sendall(frame)
                if sent % 8 == 0:
                    spooled.extend(files_open_under(gw.process.pid, gw.tmpdir))
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the gateway stopped listening to the body: the point of the test

    began = time.monotonic()
    sock.sendall(head % (path.encode(), HOST.encode(), gw.port, framing))
    uploader = threading.Thread(target=upload, daemon=True)
    uploader.start()
    try:
        status, headers, body = read_response(sock, timeout=30)
        elapsed = time.monotonic() - began
    finally:
        sock.close()
        uploader.join(30)
    assert not spooled, f"the body was spooled to {set(spooled)}"
    return status, headers, body, elapsed


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/admin/login/"])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_huge_body_is_refused_before_it_is_read(edge, path, chunked):
    rss_before = rss_kib(edge.process.pid)
    status, headers, body, elapsed = send_huge_body(edge, path, chunked=chunked)
    assert status == 413, body[:300]
    assert json.loads(body)["error"]["code"] == "request_too_large"
    assert set(json.loads(body)["error"]) == {"message", "type", "param", "code"}
    assert uuid.UUID(headers["x-request-id"])
    assert elapsed < 1.0
    assert os.listdir(edge.tmpdir) == []
    assert rss_kib(edge.process.pid) - rss_before < 8 * 1024  # KiB: the 200 MiB never reached memory either


def test_a_declared_length_over_the_limit_is_refused_without_waiting_for_the_body(edge):
    refused = edge.health()["request_log"]["refused_bodies"]
    with socket.create_connection((HOST, edge.port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: %s:%d\r\nContent-Length: %d\r\n\r\n" % (
            HOST.encode(), edge.port, HUGE))  # fmt: skip
        status, _, body = read_response(sock, timeout=1)
    assert status == 413 and json.loads(body)["error"]["code"] == "request_too_large"
    assert edge.health()["request_log"]["refused_bodies"] == refused + 1, "refused before authentication: counted"


def test_a_client_that_sends_its_whole_body_before_reading_gets_the_413_too(edge):
    """Like most clients, urllib sends all of the body first (and asks to close the connection after the answer)."""
    status, headers, body = edge.request("POST", "/v1/chat/completions", b"x" * (16 * MiB))
    assert status == 413 and json.loads(body)["error"]["code"] == "request_too_large"
    assert uuid.UUID(headers["x-request-id"])


def test_healthz_does_not_read_a_posted_body(edge):
    with socket.create_connection((HOST, edge.port)) as sock:
        # Announce a body and never send it: a handler that waited for it would never answer.
        sock.sendall(b"POST /healthz HTTP/1.1\r\nHost: %s:%d\r\nContent-Length: 1000000\r\n\r\n" % (
            HOST.encode(), edge.port))  # fmt: skip
        status, headers, body = read_response(sock, timeout=3)
    assert status == 200 and json.loads(body)["status"] == "ok" and uuid.UUID(headers["x-request-id"])


def test_a_chunked_body_under_the_limit_reaches_the_api_whole(edge):
    raw = make_key()
    auth = {"Authorization": f"Bearer {raw}"}
    wait_until(lambda: edge.request("GET", "/v1/models", headers=auth)[0] == 200, message="the key known")
    body = json.dumps({"model": "vault-nowhere", "messages": [{"role": "user", "content": "x" * 3_000_000}]}).encode()
    frames = b"".join(b"%x\r\n%s\r\n" % (len(body[i : i + MiB]), body[i : i + MiB]) for i in range(0, len(body), MiB))
    with socket.create_connection((HOST, edge.port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: %s:%d\r\nAuthorization: Bearer %s\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n%s0\r\n\r\n" % (
                         HOST.encode(), edge.port, raw.encode(), frames))  # fmt: skip
        status, _, answer = read_response(sock)
    # The model it names is unknown: the body was read whole and parsed.
    assert status == 404 and json.loads(answer)["error"]["code"] == "model_not_found", answer
    assert os.listdir(edge.tmpdir) == []


@pytest.mark.parametrize("path", ["/v1/models", "/v1/chat/completions", "/healthz"])
def test_a_host_not_in_allowed_hosts_is_refused_by_the_api(edge, path):
    status, headers, body = edge.request("GET", path, headers={"Host": "evil.example"})
    assert status == 400 and uuid.UUID(headers["x-request-id"]), edge.log()[-4000:]
    if path.startswith("/v1/"):
        assert set(json.loads(body)["error"]) == {"message", "type", "param", "code"}
    status, _, _ = edge.request("GET", path, headers={"Host": f"localhost:{edge.port}"})
    assert status != 400


@pytest.mark.parametrize(
    "path", ["/static/../manage.py", "/static/%2e%2e/manage.py", "/static/admin/%00.css", "/static/%00"]
)
def test_a_bad_static_path_is_a_client_error_with_a_request_id(edge, path):
    status, headers, body = edge.request("GET", path)
    assert 400 <= status < 500 and uuid.UUID(headers["x-request-id"])
    assert b"DJANGO_SETTINGS_MODULE" not in body


def test_the_access_log_leaves_query_strings_out(edge):
    secret = f"sk-secret-{uuid.uuid4().hex}"
    status, _, _ = edge.request("GET", f"/v1/models?api_key={secret}")
    assert status == 401
    wait_until(lambda: '"GET /v1/models HTTP/1.1" 401' in edge.log(), message="the request in the access log")
    assert secret not in edge.log()
