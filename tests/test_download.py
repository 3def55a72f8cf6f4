"""Tests for genlab.data.download against a local HTTP server (no internet)."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from genlab.data import download, load_dataset
from genlab.data.download import SPECS, DownloadError, DownloadSpec, FileSpec, verify

STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_gz(arr: np.ndarray) -> bytes:
    header = struct.pack(">I", 0x0800 + arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return gzip.compress(header + arr.astype(np.uint8).tobytes())


class Server:
    """A ThreadingHTTPServer on 127.0.0.1 serving one directory; counts GET requests."""

    def __init__(self, directory: Path):
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(directory)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def served(tmp_path):
    """Small MNIST-format files served over HTTP, registered as the fake dataset "tiny"."""
    src = tmp_path / "server"
    src.mkdir()
    rng = np.random.default_rng(0)
    arrays = {
        STEMS[0]: rng.integers(0, 256, (20, 28, 28)),
        STEMS[1]: rng.integers(0, 10, 20),
        STEMS[2]: rng.integers(0, 256, (7, 28, 28)),
        STEMS[3]: rng.integers(0, 10, 7),
    }
    files = []
    for stem, arr in arrays.items():
        data = idx_gz(arr)
        (src / f"{stem}.gz").write_bytes(data)
        files.append(FileSpec(f"{stem}.gz", sha256=hashlib.sha256(data).hexdigest(), md5=hashlib.md5(data).hexdigest()))
    server = Server(src)
    SPECS["tiny"] = DownloadSpec(files=files, urls=[server.url])
    try:
        yield server, src, arrays
    finally:
        del SPECS["tiny"]
        server.close()


def test_download_verify_load_and_skip(served, tmp_path, capsys):
    server, _, arrays = served
    dest = tmp_path / "dest"
    assert download("tiny", root=dest, progress=False) == dest
    assert len(server.requests) == 4
    assert sorted(p.name for p in dest.iterdir()) == sorted(f"{s}.gz" for s in STEMS)  # no temp files left
    for spec in SPECS["tiny"].files:
        assert verify(dest / spec.name, spec)

    ds = load_dataset("mnist", "test", root=dest, labels=True)
    assert torch.equal(ds.x[:, 0], torch.from_numpy(arrays[STEMS[2]].astype(np.uint8)))
    assert len(load_dataset("mnist", "val", root=dest, val_size=4)) == 4

    capsys.readouterr()
    download("tiny", root=dest, progress=False)
    assert len(server.requests) == 4  # nothing fetched again
    assert capsys.readouterr().err.count("verified") == 4

    download("tiny", root=dest, progress=True, force=True)
    assert len(server.requests) == 8


def test_download_replaces_bad_local_file(served, tmp_path):
    server, _, _ = served
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / f"{STEMS[3]}.gz").write_bytes(b"stale")
    download("tiny", root=dest, progress=False)
    assert verify(dest / f"{STEMS[3]}.gz", SPECS["tiny"].files[3])


def test_download_checksum_mismatch(served, tmp_path):
    server, src, _ = served
    (src / f"{STEMS[2]}.gz").write_bytes(b"corrupted content")
    dest = tmp_path / "dest"
    with pytest.raises(ValueError) as err:
        download("tiny", root=dest, progress=False)
    msg = str(err.value)
    assert f"{STEMS[2]}.gz" in msg and server.url in msg
    assert SPECS["tiny"].files[2].sha256 in msg and hashlib.sha256(b"corrupted content").hexdigest() in msg
    assert not (dest / f"{STEMS[2]}.gz").exists()
    assert not [p for p in dest.iterdir() if p.name.startswith(".")]  # no temp file left


def test_download_falls_back_to_next_mirror(served, tmp_path, monkeypatch):
    server, _, _ = served
    SPECS["tiny"].urls = ["http://127.0.0.1:9/nothing-here/", server.url]
    dest = download("tiny", root=tmp_path / "dest", progress=False)
    assert len(list(dest.iterdir())) == 4


def test_download_network_error_lists_urls(served, tmp_path, monkeypatch):
    dead = "http://127.0.0.1:9/"
    monkeypatch.setenv("GENLAB_MIRROR", dead)  # overrides the spec's mirrors
    with pytest.raises(DownloadError) as err:
        download("tiny", root=tmp_path / "dest", progress=False)
    msg = str(err.value)
    assert dead + STEMS[0] in msg and str(tmp_path / "dest") in msg and "manually" in msg


def test_download_base_url_and_404(served, tmp_path):
    server, _, _ = served
    with pytest.raises(DownloadError, match="404"):
        download("tiny", root=tmp_path / "dest", base_url=server.url + "missing", progress=False)
    assert download("tiny", root=tmp_path / "dest", base_url=server.url.rstrip("/"), progress=False)


def test_download_unknown_name(tmp_path):
    with pytest.raises(ValueError, match="mnist, fashion-mnist"):
        download("digits", root=tmp_path)


def test_builtin_specs_have_checksums():
    for name in ("mnist", "fashion-mnist"):
        spec = SPECS[name]
        assert [f.name for f in spec.files] == [f"{s}.gz" for s in STEMS] and spec.urls
        for f in spec.files:
            assert (f.sha256 and len(f.sha256) == 64) or (f.md5 and len(f.md5) == 32)
    with pytest.raises(ValueError, match="no checksum"):
        verify(Path(__file__), FileSpec("x"))
