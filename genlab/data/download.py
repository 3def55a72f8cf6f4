"""Download the official dataset files and verify them against published checksums.

``SPECS`` maps a dataset name to its files and mirrors.  Every checksum here is a published
one (sources in the comments); a file is only ever moved into place after it verifies.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .base import default_data_root

TIMEOUT_S = 60
CHUNK = 1 << 16


@dataclass(frozen=True)
class FileSpec:
    """One file to download: its name and at least one checksum (sha256 preferred)."""

    name: str
    sha256: str | None = None
    md5: str | None = None


@dataclass
class DownloadSpec:
    """A downloadable dataset: its files and the base URLs of its mirrors, tried in order."""

    files: list[FileSpec]
    urls: list[str] = field(default_factory=list)


SPECS: dict[str, DownloadSpec] = {
    # sha256 as published e.g. in TensorFlow Datasets' url_checksums and checked against our own
    # copy; md5 of the .gz files as in torchvision's MNIST resources.
    "mnist": DownloadSpec(
        files=[
            FileSpec("train-images-idx3-ubyte.gz",
                     sha256="440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                     md5="f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            FileSpec("train-labels-idx1-ubyte.gz",
                     sha256="3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                     md5="d53e105ee54ea40749a09fcbcd1e9432"),
            FileSpec("t10k-images-idx3-ubyte.gz",
                     sha256="8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                     md5="9fb629c4189551a2d022fa330f9573f3"),
            FileSpec("t10k-labels-idx1-ubyte.gz",
                     sha256="f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
                     md5="ec29112dd5afa0611ce80d1b7f02629c"),
        ],
        urls=[
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ],
    ),
    # md5 from the "Get the Data" table of the README of github.com/zalandoresearch/fashion-mnist
    # (commit 02cf0676df9403f820db28474248ba7d7d1060bb); torchvision's FashionMNIST uses the same values.
    "fashion-mnist": DownloadSpec(
        files=[
            FileSpec("train-images-idx3-ubyte.gz", md5="8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            FileSpec("train-labels-idx1-ubyte.gz", md5="25c81989df183df01b3e8a0aad5dffbe"),
            FileSpec("t10k-images-idx3-ubyte.gz", md5="bef4ecab320f06d8554ea6380940ec79"),
            FileSpec("t10k-labels-idx1-ubyte.gz", md5="bb300cfdad3c16e7a12a480ee83cd310"),
        ],
        urls=["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
    ),
    # md5 of the binary version as published in the download table of the CIFAR-10 page,
    # https://www.cs.toronto.edu/~kriz/cifar.html ("CIFAR-10 binary version (suitable for C programs)", 162 MB).
    "cifar10": DownloadSpec(
        files=[FileSpec("cifar-10-binary.tar.gz", md5="c32a1d4ab5d03f1284b67883e8d87530")],
        urls=["https://www.cs.toronto.edu/~kriz/"],
    ),
}


class DownloadError(RuntimeError):
    """No mirror could deliver a file (network errors, HTTP errors)."""


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def file_digest(path: str | Path, algorithm: str) -> str:
    """Hex digest of a file's contents (``algorithm`` is "sha256" or "md5")."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _expected(filespec: FileSpec) -> tuple[str, str]:
    """The (algorithm, checksum) to verify a file with: sha256 if known, else md5."""
    if filespec.sha256:
        return "sha256", filespec.sha256.lower()
    if filespec.md5:
        return "md5", filespec.md5.lower()
    raise ValueError(f"{filespec.name}: no checksum in its FileSpec; refusing to use an unverified file")


def verify(path: str | Path, filespec: FileSpec) -> bool:
    """True if ``path`` exists and matches the checksum of ``filespec`` (sha256 if given, else md5)."""
    algorithm, expected = _expected(filespec)
    path = Path(path)
    return path.is_file() and file_digest(path, algorithm) == expected


def _join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


def _fetch(url: str, dest: Path, label: str, progress: bool) -> None:
    """Stream ``url`` into the open-able path ``dest`` (overwritten)."""
    request = urllib.request.Request(url, headers={"User-Agent": "genlab"})
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response, open(dest, "wb") as out:
        total = response.headers.get("Content-Length")
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=int(total) if total else None, unit="B", unit_scale=True, desc=label, leave=False)
        try:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()


def _download_file(filespec: FileSpec, directory: Path, mirrors: list[str], progress: bool) -> None:
    """Download one file from the first mirror that delivers it intact, then move it into place."""
    algorithm, expected = _expected(filespec)
    dest = directory / filespec.name
    failures: list[str] = []
    mismatches: list[str] = []
    for base in mirrors:
        url = _join(base, filespec.name)
        fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{filespec.name}.", suffix=".part")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            _say(f"downloading {url}")
            try:
                _fetch(url, tmp, filespec.name, progress)
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
                failures.append(f"{url}: {getattr(e, 'reason', None) or e}")
                continue
            actual = file_digest(tmp, algorithm)
            if actual != expected:
                mismatches.append(f"{url}: expected {algorithm} {expected}, got {actual}")
                continue
            os.replace(tmp, dest)
            _say(f"{filespec.name}: downloaded and verified ({algorithm})")
            return
        finally:
            tmp.unlink(missing_ok=True)

    if mismatches:
        raise ValueError(
            f"checksum mismatch for {filespec.name}; the downloaded file was deleted. "
            + "; ".join(mismatches)
            + (f". Other mirrors failed: {'; '.join(failures)}" if failures else "")
        )
    raise DownloadError(
        f"could not download {filespec.name}. Tried:\n  " + "\n  ".join(failures)
        + f"\nCheck your network (or set a mirror: `genlab data NAME --mirror URL`, base_url= in Python, or the GENLAB_MIRROR environment variable), or download the file "
        f"manually into {directory} and run the command again to verify it."
    )


def download(
    name: str,
    root: str | Path | None = None,
    *,
    base_url: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Download and verify the files of dataset ``name`` into ``root`` (default ``default_data_root()/name``).

    Files already present that verify are left alone (nothing is written then, so a read-only
    directory of good files is fine).  Each missing or bad file is downloaded to a temporary file
    in the same directory, verified, and atomically moved into place.  ``base_url`` (or the
    ``GENLAB_MIRROR`` environment variable) replaces the built-in mirror list.  ``force``
    downloads again even files that verify.  Returns the directory.
    """
    if name not in SPECS:
        raise ValueError(
            f"no download for dataset {name!r}; downloadable: {', '.join(SPECS)} "
            "(digits and shapes are built in; folder datasets are your own images)"
        )
    spec = SPECS[name]
    directory = Path(root).expanduser() if root is not None else default_data_root() / name
    mirror = base_url or os.environ.get("GENLAB_MIRROR")
    mirrors = [mirror] if mirror else list(spec.urls)
    if not mirrors:
        raise ValueError(f"dataset {name!r} has no download URL; pass base_url")

    for filespec in spec.files:
        dest = directory / filespec.name
        if dest.exists() and not force:
            if verify(dest, filespec):
                _say(f"{filespec.name}: verified ({_expected(filespec)[0]})")
                continue
            _say(f"{filespec.name}: checksum mismatch, downloading it again")
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise PermissionError(f"cannot create {directory} to download {name} into it ({e}); choose another root") from e
        if not os.access(directory, os.W_OK):
            raise PermissionError(
                f"{filespec.name} is missing or bad in {directory}, which is not writable; "
                "choose a writable root (data.root=DIR or GENLAB_DATA)"
            )
        _download_file(filespec, directory, mirrors, progress)
    return directory
