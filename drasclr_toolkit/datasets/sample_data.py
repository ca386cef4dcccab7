"""Real chest CT scans for tests and notebooks, fetched through pip and cached.

The pyradiomics-bhklab 3.1.4 source distribution on PyPI ships two thoracic CT scans in
Hounsfield units: ``data/lung1_image.nrrd`` (512×512×48, 0.57×0.57×5 mm) and
``data/lung2_image.nrrd`` (512×512×61, 0.63×0.63×5 mm). :func:`real_chest_ct` downloads the
sdist once with the ordinary pip client (so the user's index, proxy and certificate settings
apply), extracts both scans with :mod:`tarfile` into a cache folder and returns the path.

Cache folder: ``cache_dir`` if given, else ``$DRASCLR_CACHE/sample_data`` when the
environment variable ``DRASCLR_CACHE`` is set, else ``~/.cache/drasclr_toolkit/sample_data``.

Example:
    >>> from drasclr_toolkit.datasets.sample_data import real_chest_ct
    >>> path = real_chest_ct("lung1")            # doctest: +SKIP
    >>> path.name                                # doctest: +SKIP
    'lung1_image.nrrd'
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from drasclr_toolkit.errors import DrasclrError, InputError

__all__ = ["SAMPLES", "SampleDataUnavailable", "default_cache_dir", "real_chest_ct"]

PACKAGE = "pyradiomics-bhklab"
VERSION = "3.1.4"
# name -> member path inside the sdist (below its top-level folder)
SAMPLES: dict[str, str] = {
    "lung1": "data/lung1_image.nrrd",
    "lung2": "data/lung2_image.nrrd",
}
CACHE_ENV = "DRASCLR_CACHE"
# Words in pip's output that mean the registry could not be reached (not a bug of ours).
_NETWORK_SIGNS = (
    "no matching distribution found",
    "could not find a version that satisfies",
    "could not fetch url",
    "newconnectionerror",
    "max retries exceeded",
    "temporary failure in name resolution",
    "name or service not known",
    "network is unreachable",
    "connection refused",
    "connection reset",
    "proxyerror",
    "sslerror",
    "connecttimeout",
    "readtimeout",
    "timed out",
    "read timed out",
)


class SampleDataUnavailable(DrasclrError, RuntimeError):
    """The sample data could not be obtained because the package registry is unreachable."""


def default_cache_dir() -> Path:
    """Where sample scans are cached (see the module docstring)."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root).expanduser() / "sample_data"
    return Path.home() / ".cache" / "drasclr_toolkit" / "sample_data"


def real_chest_ct(
    name: str = "lung1",
    cache_dir: str | os.PathLike | None = None,
    timeout_s: float = 900.0,
) -> Path:
    """Path of a real chest CT scan (NRRD, HU), downloaded and cached on first use.

    Args:
        name: ``"lung1"`` or ``"lung2"``.
        cache_dir: cache folder (default: :func:`default_cache_dir`).
        timeout_s: limit for the pip download.

    Raises:
        SampleDataUnavailable: the package registry cannot be reached (offline machine).
        ValueError: unknown ``name``.
        RuntimeError: pip or the archive failed for another reason (the message says why).

    Example:
        >>> from drasclr_toolkit.data import load_ct
        >>> ct = load_ct(real_chest_ct("lung2"), subject_id="lung2")   # doctest: +SKIP
        >>> ct.shape                                                   # doctest: +SKIP
        (61, 512, 512)
    """
    if name not in SAMPLES:
        raise InputError(f"unknown sample {name!r}; choose one of {sorted(SAMPLES)}")
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = cache / Path(SAMPLES[name]).name
    if target.is_file() and target.stat().st_size > 0:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        sdist = _pip_download(Path(tmp), timeout_s)
        _extract_samples(sdist, cache)
    if not target.is_file():
        raise RuntimeError(
            f"{PACKAGE}=={VERSION} did not contain {SAMPLES[name]}; the sample data set has "
            "changed: report this to the drasclr_toolkit developers"
        )
    return target


def _pip_download(dest: Path, timeout_s: float) -> Path:
    # Only this package as source ('--no-binary PACKAGE', not ':all:'): pip still prepares
    # the sdist's metadata, and with ':all:' it would also try to compile numpy and the
    # other build requirements from source, which fails on ordinary machines.
    cmd = [
        sys.executable, "-m", "pip", "download",
        "--no-deps", "--no-binary", PACKAGE, "--disable-pip-version-check", "--no-input",
        "-d", str(dest), f"{PACKAGE}=={VERSION}",
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise SampleDataUnavailable(
            f"pip download of {PACKAGE}=={VERSION} did not finish in {timeout_s:g} s; the package "
            "registry seems unreachable or very slow (check the network or the pip index settings)"
        ) from None
    output = (proc.stdout or "") + (proc.stderr or "")
    if proc.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-8:])
        if any(sign in output.lower() for sign in _NETWORK_SIGNS):
            raise SampleDataUnavailable(
                f"cannot download {PACKAGE}=={VERSION} from the package registry (offline or "
                f"blocked?); pip said:\n{tail}"
            )
        raise RuntimeError(f"pip download of {PACKAGE}=={VERSION} failed:\n{tail}")
    found = sorted(dest.glob("*.tar.gz"))
    if not found:
        raise RuntimeError(
            f"pip download of {PACKAGE}=={VERSION} gave no source archive in {dest}; "
            f"pip said:\n{output[-2000:]}"
        )
    return found[0]


def _extract_samples(sdist: Path, cache: Path) -> None:
    """Copy every sample scan out of the archive; each file appears atomically."""
    wanted = {path: Path(path).name for path in SAMPLES.values()}
    try:
        with tarfile.open(sdist, "r:gz") as archive:
            for member in archive.getmembers():
                # Members are '<pkg>-<version>/data/...'; match on the part below the top folder.
                inner = member.name.split("/", 1)[-1]
                if inner not in wanted or not member.isfile():
                    continue
                source = archive.extractfile(member)
                if source is None:
                    continue
                fd, tmp = tempfile.mkstemp(dir=cache, prefix=".sample-", suffix=".tmp")
                try:
                    with os.fdopen(fd, "wb") as out:
                        shutil.copyfileobj(source, out)
                    os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache is ordinary data
                    os.replace(tmp, cache / wanted[inner])
                finally:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise RuntimeError(f"cannot read the downloaded archive {sdist.name}: {exc}") from None
