"""minirs.hub against a real local HTTP server that speaks the Hugging Face hub's URL layout (127.0.0.1 only).

Each test starts two ThreadingHTTPServers on random ports: the "hub" (`/{repo}/resolve/{rev}/{file}`,
`/api/models/{repo}/revision/{rev}`, with X-Repo-Commit / ETag / X-Linked-* headers and X-Error-Code errors) and
a "CDN" on another port, so another origin, that serves LFS files after the hub's 302. Behaviours are switched
per test: a gated repo that wants a bearer token, a connection dropped halfway through a file, a wrong sha256,
5xx replies, a renamed repo. HF_ENDPOINT points at the hub and HF_HOME at a temporary folder.
"""

import errno
import hashlib
import json
import logging
import re
import socket
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest

from minirs import MinirsError, hub
from minirs.hub import download as hub_download
from minirs.hub import http as hub_http

REPO = "org/model"
GATED = "org/gated"
COMMIT = "1" * 40
COMMIT2 = "2" * 40
TOKEN = "hf_SECRETtoken1234567890"
GGUF = bytes(range(256)) * 1024 * 2        # 512 KiB, served from the CDN as an LFS file
GGUF_V1 = b"GGUF" + b"\x01" * 70_000
CONFIG = b'{"model_type": "llama"}'


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    """State and switches shared by the hub and CDN handlers; every request is logged as (server, method, path,
    headers)."""

    def __init__(self):
        self.repos: dict[str, dict] = {}
        self.renamed: dict[str, str] = {}
        self.blobs: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, str, dict]] = []
        self.drop_once: set[str] = set()       # sha256 of CDN files to cut off halfway, once
        self.bad_checksum: set[str] = set()    # filenames whose announced sha256 is wrong
        self.fail_status: list[int] = []       # statuses for the next hub requests
        self.servers: list[ThreadingHTTPServer] = []
        self.hub_url = self.cdn_url = ""

    def add_repo(self, repo_id, files, *, lfs=(), gated=False, revisions=None):
        revisions = revisions or {"main": (COMMIT, files)}
        self.repos[repo_id] = {"gated": gated, "lfs": set(lfs), "refs": {k: c for k, (c, _) in revisions.items()},
                               "files": {c: fs for c, fs in revisions.values()}}

    def hits(self, server=None, method=None):
        return [r for r in self.requests if (server is None or r[0] == server) and (method is None or r[1] == method)]

    def start(self):
        for role in ("hub", "cdn"):
            srv = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(self, role))
            srv.daemon_threads = True
            threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
            self.servers.append(srv)
            setattr(self, f"{role}_url", f"http://127.0.0.1:{srv.server_address[1]}")

    def stop(self):
        while self.servers:
            srv = self.servers.pop()
            srv.shutdown()
            srv.server_close()


def make_handler(fake: FakeHub, role: str):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_HEAD(self):
            self.serve(body=False)

        def do_GET(self):
            self.serve(body=True)

        def reply(self, status, headers=None, body=b"", send_body=True):
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, str(v))
            if "Content-Length" not in (headers or {}):
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send_body and body:
                self.wfile.write(body)

        def error(self, status, code, message):
            self.reply(status, {"X-Error-Code": code, "X-Error-Message": message}, message.encode())

        def serve(self, body):
            fake.requests.append((role, self.command, self.path, dict(self.headers)))
            if role == "cdn":
                return self.serve_cdn(body)
            if fake.fail_status:
                return self.reply(fake.fail_status.pop(0), body=b"try later")
            if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/([^/]+)", self.path):
                repo, commit = self.find(m[1], unquote(m[2]))
                if repo is not None:
                    siblings = [{"rfilename": name} for name in repo["files"][commit]]
                    self.reply(200, {"Content-Type": "application/json"},
                               json.dumps({"id": m[1], "sha": commit, "siblings": siblings}).encode())
                return
            m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", self.path)
            if m is None:
                return self.reply(400, body=b"bad path")
            if m[1] in fake.renamed:    # a renamed repo: a relative redirect on the same origin
                return self.reply(307, {"Location": self.path.replace(m[1], fake.renamed[m[1]], 1)})
            repo, commit = self.find(m[1], unquote(m[2]))
            if repo is None:
                return
            filename = unquote(m[3])
            data = repo["files"][commit].get(filename)
            if data is None:
                return self.error(404, "EntryNotFound", f"{filename} does not exist on {unquote(m[2])}")
            headers = {"X-Repo-Commit": commit}
            if filename in repo["lfs"]:
                fake.blobs[sha256(data)] = data
                announced = sha256(b"not the data") if filename in fake.bad_checksum else sha256(data)
                headers.update({"ETag": f'"{git_sha1(b"pointer " + data[:16])}"', "X-Linked-Etag": f'"{announced}"',
                                "X-Linked-Size": len(data), "Location": f"{fake.cdn_url}/cdn/{sha256(data)}"})
                return self.reply(302, headers)
            headers.update({"ETag": f'"{git_sha1(data)}"', "Content-Length": len(data)})
            self.reply(200, headers, data, send_body=body)

        def find(self, repo_id, revision):
            """The repo and commit for a request, or (None, None) after sending the hub's error reply."""
            repo = fake.repos.get(repo_id)
            if repo is None:
                self.error(401, "RepoNotFound", "Repository not found")
                return None, None
            if repo["gated"] and self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self.error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must be authenticated.")
                return None, None
            commit = repo["refs"].get(revision) or (revision if revision in repo["files"] else None)
            if commit is None:
                self.error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                return None, None
            return repo, commit

        def serve_cdn(self, body):
            key = self.path.removeprefix("/cdn/")
            data = fake.blobs.get(key)
            if data is None:
                return self.reply(404, body=b"no such blob")
            start = 0
            if m := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "")):
                start = int(m[1])
            part = data[start:]
            headers = {"Content-Length": len(part), "ETag": f'"{key}"'}
            if start:
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            if body and key in fake.drop_once:    # promise the whole length, send half, hang up
                fake.drop_once.discard(key)
                self.reply(206 if start else 200, headers, part[:len(part) // 2])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            self.reply(206 if start else 200, headers, part, send_body=body)

    return Handler


@pytest.fixture
def fake(tmp_path, monkeypatch):
    f = FakeHub()
    f.add_repo(REPO, {"model.gguf": GGUF, "config.json": CONFIG}, lfs={"model.gguf"},
               revisions={"main": (COMMIT, {"model.gguf": GGUF, "config.json": CONFIG}),
                          "v1": (COMMIT2, {"model.gguf": GGUF_V1})})
    f.add_repo(GATED, {"model.gguf": GGUF, "config.json": CONFIG}, lfs={"model.gguf"}, gated=True)
    f.start()
    monkeypatch.setenv("HF_ENDPOINT", f.hub_url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH",
                 "HF_HUB_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                 "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hub_http, "RETRIES", 3)
    monkeypatch.setattr(hub_http, "BACKOFF_S", 0.01)
    monkeypatch.setattr(hub_http, "BACKOFF_MAX_S", 0.02)
    monkeypatch.setattr(hub_http, "TIMEOUT_S", (2.0, 5.0))
    monkeypatch.setattr(hub_download, "CHUNK", 16 * 1024)
    yield f
    f.stop()


def storage(tmp_path, repo=REPO) -> Path:
    return tmp_path / "hf" / "hub" / hub.repo_folder_name(repo)


def download(repo=REPO, filename="model.gguf", **kw):
    kw.setdefault("progress", False)
    return hub.hf_hub_download(repo, filename, **kw)


def data_files(root: Path) -> list[str]:
    """Files under blobs/ and snapshots/ (refs/ only records which commit a branch is at)."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if (p.is_file() or p.is_symlink()) and p.relative_to(root).parts[0] != "refs")


# ---------------------------------------------------------------------------------------------------- downloads

def test_lfs_download_lands_in_the_hf_cache_layout(fake, tmp_path):
    path = download(token_source=f"literal:{TOKEN}")
    st = storage(tmp_path)
    assert path == st / "snapshots" / COMMIT / "model.gguf"
    assert path.read_bytes() == GGUF
    assert path.is_symlink() and str(path.readlink()) == f"../../blobs/{sha256(GGUF)}"
    assert (st / "refs" / "main").read_text() == COMMIT
    assert not list((st / "blobs").glob("*.incomplete"))
    # HEAD then GET at the hub with the token; the CDN (another origin) gets the GET without it
    assert [r[1] for r in fake.hits("hub")] == ["HEAD"]
    assert fake.hits("hub")[0][3]["Authorization"] == f"Bearer {TOKEN}"
    (cdn,) = fake.hits("cdn")
    assert cdn[1] == "GET" and "Authorization" not in cdn[3]


def test_small_git_file_is_named_by_its_etag(fake, tmp_path):
    path = download(filename="config.json")
    assert path.read_bytes() == CONFIG
    assert path.resolve() == (storage(tmp_path) / "blobs" / git_sha1(CONFIG)).resolve()
    assert [r[1] for r in fake.hits("hub")] == ["HEAD", "GET"] and not fake.hits("cdn")


def test_two_files_of_one_commit_share_the_snapshot(fake, tmp_path):
    a, b = download(), download(filename="config.json")
    assert a.parent == b.parent == storage(tmp_path) / "snapshots" / COMMIT


def test_cached_file_is_reused_with_the_server_stopped(fake, tmp_path, monkeypatch):
    sleeps = []
    monkeypatch.setattr(hub_http, "_sleep", sleeps.append)
    first = download()
    fake.stop()
    assert download() == first and first.read_bytes() == GGUF
    assert sleeps == []    # with a cached copy one failed HEAD is enough, no backoff


def test_cached_commit_needs_no_request(fake):
    download(revision=COMMIT)
    n = len(fake.requests)
    assert download(revision=COMMIT).read_bytes() == GGUF
    assert len(fake.requests) == n


def test_offline_mode_makes_no_request(fake, monkeypatch):
    download()
    n = len(fake.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert download().read_bytes() == GGUF
    with pytest.raises(hub.NotCachedError, match=r"org/model:config.json.*offline mode is on"):
        download(filename="config.json")
    with pytest.raises(hub.NotCachedError):
        download(revision="v1")
    assert len(fake.requests) == n


def test_files_cached_by_another_tool_are_used_offline(fake, tmp_path, monkeypatch):
    st = storage(tmp_path, "other/repo")
    (st / "blobs").mkdir(parents=True)
    (st / "blobs" / "abc123").write_bytes(b"weights")
    (st / "snapshots" / COMMIT2).mkdir(parents=True)
    (st / "snapshots" / COMMIT2 / "w.gguf").symlink_to("../../blobs/abc123")
    (st / "refs").mkdir()
    (st / "refs" / "main").write_text(COMMIT2)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert download("other/repo", "w.gguf").read_bytes() == b"weights"
    assert hub.try_to_load_from_cache("other/repo", "w.gguf") == st / "snapshots" / COMMIT2 / "w.gguf"
    assert hub.try_to_load_from_cache("other/repo", "missing.gguf") is None
    assert not fake.requests


def test_revision_selects_branch_tag_or_commit(fake, tmp_path):
    assert download(revision="v1").read_bytes() == GGUF_V1
    assert (storage(tmp_path) / "refs" / "v1").read_text() == COMMIT2
    assert download(revision=COMMIT2).read_bytes() == GGUF_V1
    assert download().read_bytes() == GGUF
    with pytest.raises(hub.RevisionNotFoundError, match=r"'nope'.*org/model"):
        download(revision="nope")


def test_renamed_repo_redirect_is_followed_with_the_token(fake):
    fake.renamed["org/old-name"] = REPO
    path = hub.hf_hub_download("org/old-name", "model.gguf", token_source=f"literal:{TOKEN}", progress=False)
    assert path.read_bytes() == GGUF
    heads = fake.hits("hub", "HEAD")
    assert len(heads) == 2 and all(h[3]["Authorization"] == f"Bearer {TOKEN}" for h in heads)
    assert "Authorization" not in fake.hits("cdn")[0][3]


def test_progress_bar_on_stderr(fake, capsys):
    download(progress=True)
    assert "org/model:model.gguf" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- resume

def test_dropped_connection_resumes_with_range(fake, tmp_path):
    fake.drop_once.add(sha256(GGUF))
    path = download()
    assert path.read_bytes() == GGUF
    first, second = fake.hits("cdn")
    assert "Range" not in first[3]
    start = int(re.fullmatch(r"bytes=(\d+)-", second[3]["Range"])[1])
    assert 0 < start <= len(GGUF) // 2


def test_interrupted_download_resumes_on_the_next_call(fake, tmp_path, monkeypatch):
    monkeypatch.setattr(hub_http, "RETRIES", 0)
    fake.drop_once.add(sha256(GGUF))
    with pytest.raises(hub.DownloadError, match="next call resumes"):
        download()
    st = storage(tmp_path)
    partial = st / "blobs" / f"{sha256(GGUF)}.incomplete"
    kept = partial.stat().st_size
    assert 0 < kept < len(GGUF)
    assert not (st / "snapshots").exists()    # nothing a reader could mistake for the file
    assert download().read_bytes() == GGUF
    assert fake.hits("cdn")[-1][3]["Range"] == f"bytes={kept}-"
    assert not partial.exists()


def test_resume_shows_the_offset_in_the_progress_bar(fake, tmp_path, capsys):
    blobs = storage(tmp_path) / "blobs"
    blobs.mkdir(parents=True)
    (blobs / f"{sha256(GGUF)}.incomplete").write_bytes(GGUF[:len(GGUF) // 2])
    assert download(progress=True).read_bytes() == GGUF
    assert fake.hits("cdn")[0][3]["Range"] == f"bytes={len(GGUF) // 2}-"
    assert re.search(r"256k?/512k", capsys.readouterr().err)


# ---------------------------------------------------------------------------------------------------- tokens

@pytest.mark.parametrize("source, value, setup", [
    ("cache", None, "env"),
    ("cache", None, "legacy-env"),
    ("cache", None, "file"),
    ("cache", None, "token-path"),
    (f"literal:{TOKEN}", None, None),
    ("envvar:MY_TOKEN", None, "my-env"),
    ("env:MY_TOKEN", None, "my-env"),
    ("env", None, "env"),
    ("path:{tmp}/tok.txt", None, "tok-file"),
    ("literal", TOKEN, None),
    ("env", "MY_TOKEN", "my-env"),
    ("path", "{tmp}/tok.txt", "tok-file"),
])
def test_each_token_source_opens_the_gated_repo(fake, tmp_path, monkeypatch, source, value, setup):
    if setup == "env":
        monkeypatch.setenv("HF_TOKEN", TOKEN)
    elif setup == "legacy-env":
        monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", TOKEN)
    elif setup == "file":
        (tmp_path / "hf").mkdir()
        (tmp_path / "hf" / "token").write_text(TOKEN + "\n")
    elif setup == "token-path":
        (tmp_path / "elsewhere").write_text(TOKEN)
        monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "elsewhere"))
    elif setup == "my-env":
        monkeypatch.setenv("MY_TOKEN", TOKEN)
    elif setup == "tok-file":
        (tmp_path / "tok.txt").write_text(f"  {TOKEN}\n")
    source = source.replace("{tmp}", str(tmp_path))
    value = value.replace("{tmp}", str(tmp_path)) if value else value
    path = download(GATED, token_source=source, token_source_value=value)
    assert path.read_bytes() == GGUF
    assert fake.hits("hub")[0][3]["Authorization"] == f"Bearer {TOKEN}"


def test_none_and_empty_cache_send_no_token(fake, monkeypatch):
    monkeypatch.setenv("MY_TOKEN", TOKEN)
    download(token_source="none")
    download(filename="config.json")    # "cache" with nothing cached
    assert all("Authorization" not in r[3] for r in fake.requests)


@pytest.mark.parametrize("source, value, match", [
    ("bogus:x", None, "unknown token_source 'bogus'"),
    (TOKEN, None, "unknown token_source '<hidden>'"),
    ("literal:", None, "needs the token"),
    ("path:/nonexistent/token", None, "path:/nonexistent/token: cannot read"),
    ("env:UNSET_TOKEN_VAR", None, "UNSET_TOKEN_VAR is not set"),
    ("cache:x", None, "takes no value"),
    (f"literal:{TOKEN}", TOKEN, "not both"),
])
def test_malformed_token_sources(source, value, match):
    with pytest.raises(hub.TokenSourceError, match=match) as e:
        hub.get_token(source, value)
    assert TOKEN not in str(e.value)
    assert isinstance(e.value, MinirsError) and isinstance(e.value, ValueError)


# ---------------------------------------------------------------------------------------------------- errors

def test_gated_repo_without_token(fake, tmp_path):
    with pytest.raises(hub.GatedRepoError, match=r"org/gated.*gated and no token was sent.*token_source"):
        download(GATED, token_source="none")
    assert not storage(tmp_path, GATED).joinpath("snapshots").exists()


def test_token_never_appears_in_errors_or_logs(fake, caplog):
    caplog.set_level(logging.DEBUG)
    errors = []
    for setup in ("wrong-token", "server-errors"):
        if setup == "server-errors":
            fake.fail_status[:] = [500] * 10
        source = f"literal:{TOKEN}-wrong" if setup == "wrong-token" else f"literal:{TOKEN}"
        with pytest.raises(MinirsError) as e:
            download(GATED, token_source=source)
        errors.append(e.value)
    assert isinstance(errors[0], hub.GatedRepoError) and "has no access" in str(errors[0])
    assert isinstance(errors[1], hub.DownloadError) and "HTTP 500" in str(errors[1])
    text = caplog.text + "".join("".join(traceback.format_exception(e)) + repr(e) for e in errors)
    assert TOKEN not in text


def test_repo_not_found_names_the_repo(fake):
    with pytest.raises(hub.RepoNotFoundError, match=r"'org/missing' not found at http://127\.0\.0\.1"):
        download("org/missing")


def test_file_not_found_names_repo_and_file(fake):
    with pytest.raises(hub.EntryNotFoundError, match=r"'nope\.gguf' not found in org/model \(revision main\)"):
        download(filename="nope.gguf")


def test_network_failure_after_retries(fake, monkeypatch, tmp_path):
    sleeps = []
    monkeypatch.setattr(hub_http, "_sleep", sleeps.append)
    with socket.socket() as s:    # a port on 127.0.0.1 that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(hub.DownloadError, match=r"network failure after 4 attempt\(s\): ConnectionError"):
        download()
    assert len(sleeps) == 3 and sleeps == sorted(sleeps)
    assert not storage(tmp_path).exists()


def test_server_errors_are_retried(fake, monkeypatch):
    sleeps = []
    monkeypatch.setattr(hub_http, "_sleep", sleeps.append)
    fake.fail_status[:] = [503, 502]
    assert download().read_bytes() == GGUF
    assert len(sleeps) == 2


def test_wrong_checksum_keeps_nothing(fake, tmp_path):
    fake.bad_checksum.add("model.gguf")
    with pytest.raises(hub.ChecksumError, match=r"org/model:model.gguf: sha256 .* deleted"):
        download()
    assert data_files(storage(tmp_path)) == []


def test_failed_update_keeps_the_old_snapshot_usable_offline(fake, monkeypatch):
    download()
    repo = fake.repos[REPO]
    repo["refs"]["main"] = COMMIT2    # main moved on, and its new file arrives corrupted
    fake.bad_checksum.add("model.gguf")
    with pytest.raises(hub.ChecksumError):
        download()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert download().read_bytes() == GGUF


def test_empty_file_and_lfs_redirect_without_linked_size(fake, monkeypatch):
    fake.add_repo("org/odd", {"empty.txt": b"", "w.gguf": GGUF}, lfs={"w.gguf"})
    assert download("org/odd", "empty.txt").read_bytes() == b""
    real_reply = fake.servers[0].RequestHandlerClass.reply

    def reply(self, status, headers=None, body=b"", send_body=True):
        if headers:
            headers.pop("X-Linked-Size", None)
        real_reply(self, status, headers, body, send_body)

    monkeypatch.setattr(fake.servers[0].RequestHandlerClass, "reply", reply)    # servers[0] is the hub
    assert download("org/odd", "w.gguf").read_bytes() == GGUF


def test_disk_full_keeps_nothing(fake, tmp_path, monkeypatch):
    calls = []

    def write(f, chunk):
        calls.append(len(chunk))
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        f.write(chunk)

    monkeypatch.setattr(hub_download, "_write_chunk", write)
    with pytest.raises(hub.DiskFullError, match=r"disk full while writing org/model:model.gguf"):
        download()
    assert data_files(storage(tmp_path)) == []


def test_error_classes_are_minirs_errors():
    for cls in (hub.RepoNotFoundError, hub.RevisionNotFoundError, hub.EntryNotFoundError, hub.GatedRepoError,
                hub.AuthError, hub.DownloadError, hub.ChecksumError, hub.DiskFullError, hub.NotCachedError,
                hub.TokenSourceError, hub.InvalidReferenceError):
        assert issubclass(cls, hub.FetchError) and issubclass(cls, MinirsError)


# ---------------------------------------------------------------------------------------------------- listing, refs

def test_list_repo_files_online_and_offline(fake, monkeypatch):
    assert hub.list_repo_files(REPO) == ["config.json", "model.gguf"]
    assert hub.list_repo_files(REPO, "v1") == ["model.gguf"]
    with pytest.raises(hub.RepoNotFoundError):
        hub.list_repo_files("org/missing")
    with pytest.raises(hub.GatedRepoError):
        hub.list_repo_files(GATED, token_source="none")
    assert hub.list_repo_files(GATED, token_source=f"literal:{TOKEN}") == ["config.json", "model.gguf"]
    download(filename="config.json")
    n = len(fake.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.list_repo_files(REPO) == ["config.json"]    # the cached snapshot holds only what was fetched
    with pytest.raises(hub.NotCachedError):
        hub.list_repo_files(REPO, "v1")
    assert len(fake.requests) == n


@pytest.mark.parametrize("ref, expected", [
    ("TheBloke/Mistral-7B-Instruct-v0.1-GGUF:mistral-7b-instruct-v0.1.Q4_K_M.gguf",
     hub.ModelRef("TheBloke/Mistral-7B-Instruct-v0.1-GGUF", "mistral-7b-instruct-v0.1.Q4_K_M.gguf")),
    ("org/repo@v1.0:sub/file.gguf", hub.ModelRef("org/repo", "sub/file.gguf", "v1.0")),
    ("org/repo@refs/pr/1:f.gguf", hub.ModelRef("org/repo", "f.gguf", "refs/pr/1")),
    (f"org/repo@{COMMIT}:f.gguf", hub.ModelRef("org/repo", "f.gguf", COMMIT)),
])
def test_parse_model_ref(ref, expected):
    assert hub.is_model_ref(ref)
    assert hub.parse_model_ref(ref) == expected
    assert str(expected) == ref


@pytest.mark.parametrize("ref", ["model.gguf", "org/repo", "C:/models/x.gguf", "a/b/c:f.gguf", "org/repo:",
                                 "org/repo:../x.gguf", "org/repo:/abs.gguf", "org/re--po:f.gguf"])
def test_bad_model_refs(ref):
    with pytest.raises(hub.InvalidReferenceError):
        hub.parse_model_ref(ref)


def test_resolve_model_ref_local_path_wins(fake, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    local = tmp_path / "org" / "model:model.gguf"
    local.parent.mkdir()
    local.write_bytes(b"local")
    assert hub.resolve_model_ref("org/model:model.gguf") == Path("org/model:model.gguf")
    assert not fake.requests
    assert hub.resolve_model_ref("org/model:config.json", progress=False).read_bytes() == CONFIG
    assert hub.resolve_model_ref("org/model@v1:model.gguf", progress=False).read_bytes() == GGUF_V1
    with pytest.raises(hub.InvalidReferenceError, match="not an existing file nor a hub reference"):
        hub.resolve_model_ref("missing.gguf")


def test_resolve_file_local_folder_local_file_and_hub(fake, tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "tokenizer.json").write_text("{}")
    assert hub.resolve_file(str(tmp_path / "folder"), "tokenizer.json") == tmp_path / "folder" / "tokenizer.json"
    with pytest.raises(hub.EntryNotFoundError, match="'x.gguf' not found in the local folder"):
        hub.resolve_file(str(tmp_path / "folder"), "x.gguf")
    assert hub.resolve_file(str(tmp_path / "folder" / "tokenizer.json"), "ignored") == tmp_path / "folder" / \
        "tokenizer.json"
    assert not fake.requests
    assert hub.resolve_file(REPO, "config.json", progress=False).read_bytes() == CONFIG
    assert hub.resolve_file(REPO, "model.gguf", "v1", progress=False).read_bytes() == GGUF_V1
    with pytest.raises(hub.InvalidReferenceError):
        hub.resolve_file("no/such/path", "x.gguf")


def test_cache_root_and_endpoint_from_env(monkeypatch, tmp_path):
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "HF_ENDPOINT", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    assert hub.hub_cache_dir() == Path.home() / ".cache" / "huggingface" / "hub"
    assert hub.hub_endpoint() == "https://huggingface.co"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub.hub_cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    assert hub.hub_cache_dir() == tmp_path / "cache"
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.example/")
    assert hub.hub_endpoint() == "https://hf-mirror.example"


def test_which_plain_with_a_hub_id_downloads_the_folder(fake, tmp_path):
    """Which.Plain(model_id='org/name') as mistral.rs users write it: the weights, config and tokenizer files of
    the repo (not its other files) are downloaded into one snapshot folder and the model runs from there."""
    import json

    import minirs
    from minirs.tokenizer.bpe import bytes_to_unicode
    arch = Path(__file__).resolve().parent / "golden" / "arch_llama"  # a tiny random llama in HF layout
    byte_vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}  # byte-level BPE, no merges
    tokenizer = {"model": {"type": "BPE", "vocab": byte_vocab, "merges": []}, "added_tokens": [],
                 "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
                 "decoder": {"type": "ByteLevel"}}
    files = {"config.json": (arch / "config.json").read_bytes(),
             "generation_config.json": (arch / "generation_config.json").read_bytes(),
             "model.safetensors": (arch / "model.safetensors").read_bytes(),
             "tokenizer.json": json.dumps(tokenizer).encode(), "README.md": b"not needed", "logits.npz": b"no"}
    fake.add_repo("org/tiny-hf", files, lfs={"model.safetensors"})
    runner = minirs.Runner(minirs.Which.Plain(model_id="org/tiny-hf"), device="cpu")
    try:
        res = runner.send_completion_request(minirs.CompletionRequest(prompt="hi there", max_tokens=4,
                                                                      temperature=0.0), 60)
        assert res.usage.completion_tokens == 4
    finally:
        runner.engine.shutdown()
    got = sorted(p.name for p in (storage(tmp_path, "org/tiny-hf") / "snapshots" / COMMIT).iterdir())
    assert got == ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json"]
    fake.add_repo("org/gguf-only", {"model.gguf": GGUF})
    with pytest.raises(hub.EntryNotFoundError, match="no .safetensors weights.*Which.GGUF"):
        hub.resolve_folder("org/gguf-only")


def test_which_plain_downloads_one_layout_of_a_mistral_repo(fake, tmp_path):
    """A Mistral repo with both layouts gives Mistral's (params.json, consolidated.safetensors, its tokenizer file),
    not both copies of the weights; a repo in HF's layout alone gives HF's files as before."""
    mistral = Path(__file__).resolve().parent / "golden" / "mistral_dense"
    both = {"params.json": (mistral / "params.json").read_bytes(), "tokenizer.model.v3": b"spm",
            "consolidated.safetensors": (mistral / "consolidated.safetensors").read_bytes(),
            "config.json": b"{}", "model-00001-of-00001.safetensors": b"hf copy", "tokenizer.json": b"{}",
            "model.safetensors.index.json": b"{}"}
    fake.add_repo("org/mistral-both", both, lfs={"consolidated.safetensors", "model-00001-of-00001.safetensors"})
    folder = hub.resolve_folder("org/mistral-both", progress=False)
    assert sorted(p.name for p in folder.iterdir()) == ["consolidated.safetensors", "params.json",
                                                        "tokenizer.model.v3"]
    from minirs.models.source import open_model
    assert open_model(folder).format == "mistral"
    hf_only = {k: v for k, v in both.items() if k not in ("params.json", "consolidated.safetensors")}
    fake.add_repo("org/hf-only", hf_only, lfs={"model-00001-of-00001.safetensors"})
    folder = hub.resolve_folder("org/hf-only", progress=False)
    assert sorted(p.name for p in folder.iterdir()) == sorted(hf_only)
