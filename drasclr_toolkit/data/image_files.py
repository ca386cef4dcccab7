"""Image files before SimpleITK reads them: which names are scans, and checks that a file
is whole and fits in memory.

SimpleITK reads a cut ``.nii``/``.nii.gz`` without complaint (the missing voxels become 0
HU), turns NaN voxels into 0 and says "No such file or directory" for a short MetaImage,
so these checks read the header (and, for NIfTI, the voxel stream once) and raise a
:class:`~drasclr_toolkit.data.ct_image.CTLoadError` naming what is wrong.
"""

from __future__ import annotations

import io
import math
import os
import re
import stat
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from drasclr_toolkit.data.ct_image import CTLoadError

__all__ = ["IMAGE_SUFFIXES", "check_declared_size", "check_metaimage_file", "check_nifti_file",
           "is_image_file", "nifti_header", "require_regular_file"]

# Image file suffixes SimpleITK reads that we accept as a single-file scan.
IMAGE_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def strip_image_suffix(name: str) -> str:
    low = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if low.endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` has a single-file image suffix load_ct reads."""
    return str(path).lower().endswith(IMAGE_SUFFIXES)



def require_regular_file(path: Path, subject_id: str | None) -> None:
    """CTLoadError for a path that is not a regular file or folder (a FIFO, socket or
    device would block or never end when read); checked without opening it."""
    mode = path.stat().st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a socket" if
                stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "not a regular file")
        raise CTLoadError(f"the path is {kind}, not a scan file; it is not opened",
                          subject_id=subject_id, file=path, field="file",
                          fix="point the manifest at the scan file itself (or its DICOM folder)")


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


# Bytes per voxel while loading: the file's voxel read, a float working copy, the int16
# result, and a copy made by reorientation (measured peaks are about this).
_COPIES_WHILE_LOADING = 3


def check_declared_size(path: Path, subject_id: str | None,
                        available: int | None = None) -> None:
    """CTLoadError when the image the header declares would not fit in the memory that is
    available (checked from the header, before any voxel is read), instead of a
    MemoryError or a machine that swaps."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return  # the reader below says what is wrong with the file
    size = [int(v) for v in reader.GetSize()]
    n_voxels = math.prod(size) * max(int(reader.GetNumberOfComponents()), 1)
    name = sitk.GetPixelIDValueAsString(reader.GetPixelID())
    bits = next((b for b in (64, 32, 16, 8) if f"{b}-bit" in name), 32)
    need = n_voxels * (bits // 8 + 4 * _COPIES_WHILE_LOADING - 2)
    available = _available_memory() if available is None else available
    if available is not None and need > available:
        raise CTLoadError(
            f"the header declares {' x '.join(map(str, size))} voxels of {name}; loading it "
            f"needs about {need / 2**30:,.1f} GiB of memory and {available / 2**30:,.1f} GiB "
            "are available, so it is not read",
            subject_id=subject_id, file=path, field="image size",
            fix="check the header (a damaged size field?), crop or downsample the scan, or "
            "load it on a machine with more memory")


TRUNCATED_FIX = ("copy or download the file again and compare its size or checksum with the "
                  "source, or re-export it from the original scan")
# SimpleITK's NRRD and MetaImage readers say how much data they expected and got.
_SHORT_READ = (
    re.compile(r"expected (\d+) bytes but received (\d+)"),
    re.compile(r"ideal\s*=\s*(\d+)\s*:\s*actual\s*=\s*(\d+)"),
)
_STREAM_BLOCK = 8 << 20


def short_read(message: str) -> tuple[int, int] | None:
    for pattern in _SHORT_READ:
        m = pattern.search(message)
        if m:
            return int(m.group(1)), int(m.group(2))
    return None


def nifti_header(head: bytes) -> Any:
    """The NIfTI-1 or NIfTI-2 header (a nibabel header, either byte order) at the start of
    ``head`` (decompressed bytes), or None when its first field is neither 348 nor 540.

    Example:
        >>> import nibabel as nib
        >>> header = nib.Nifti2Header()
        >>> header.set_data_shape((4, 5, 6))
        >>> nifti_header(header.binaryblock).get_data_shape(), nifti_header(b"not a header")
        ((4, 5, 6), None)
    """
    import nibabel as nib  # here, not at the top: it costs ~0.5 s of every CLI start

    for kind in (nib.Nifti1Header, nib.Nifti2Header):
        size = kind.sizeof_hdr
        if len(head) >= size:
            # check=False: a damaged header is the caller's to report, in its own words
            header = kind.from_fileobj(io.BytesIO(head[:size]), check=False)
            if int(header["sizeof_hdr"]) == size:
                return header
    return None


def _nifti_header(head: bytes, subject_id: str | None, path: Path
                  ) -> tuple[int, int, np.dtype | None]:
    """(data offset, data bytes, voxel dtype) from a NIfTI-1 or NIfTI-2 header, read by
    nibabel (the dtype None when nibabel does not know the datatype code).

    Example:
        >>> import nibabel as nib
        >>> header = nib.Nifti1Header()
        >>> header.set_data_shape((4, 5, 6)); header.set_data_dtype(np.float32)
        >>> header["magic"], header["vox_offset"] = b"n+1", 352   # a single .nii file
        >>> offset, n_bytes, dtype = _nifti_header(header.binaryblock, "s1", Path("s1.nii"))
        >>> offset, n_bytes, dtype == np.float32
        (352, 480, True)
    """
    header = nifti_header(head)
    if header is None:
        raise CTLoadError(
            "the NIfTI header is missing or damaged (its first field is not 348 or 540)",
            subject_id=subject_id, file=path, field="NIfTI header", fix=TRUNCATED_FIX,
        )
    dims = [int(d) for d in header["dim"]]
    ndim, bitpix = dims[0], int(header["bitpix"])
    if not 1 <= ndim <= 7 or bitpix <= 0:
        raise CTLoadError(
            f"the NIfTI header is damaged (dim[0] = {ndim}, bitpix = {bitpix})",
            subject_id=subject_id, file=path, field="NIfTI header", fix=TRUNCATED_FIX,
        )
    # .hdr/.img pair (magic ni1/ni2): the voxels are in another file, whose absence
    # SimpleITK reports itself.
    single_file = bytes(header["magic"]).rstrip(b"\0") in (b"n+1", b"n+2")
    offset = int(header.get_data_offset()) if single_file else 0
    try:
        dtype = header.get_data_dtype()
    except Exception:  # noqa: BLE001 - nibabel's HeaderDataError: an unknown datatype code
        dtype = None
    n_voxels = int(np.prod([max(d, 1) for d in dims[1:ndim + 1]], dtype=np.int64))
    return max(offset, 0), n_voxels * bitpix // 8, dtype


def _decompressed_blocks(path: Path, gz: bool):
    """Blocks of the file's (decompressed) bytes; raises EOFError when a gzip stream ends
    early and zlib.error when its data or checksum is damaged."""
    with open(path, "rb") as fh:
        if not gz:
            while block := fh.read(_STREAM_BLOCK):
                yield block
            return
        inflater = zlib.decompressobj(wbits=31)  # gzip header and CRC-32/size trailer checked
        while True:
            raw = fh.read(_STREAM_BLOCK)
            if not raw:
                break
            while raw:
                out = inflater.decompress(raw)
                if out:
                    yield out
                if inflater.eof:  # a member ended; another may follow (concatenated gzip)
                    raw = inflater.unused_data
                    inflater = zlib.decompressobj(wbits=31)
                    if not raw.strip(b"\0"):
                        raw = b""
                        inflater = None
                        break
                else:
                    raw = b""
            if inflater is None:
                return
        if not inflater.eof:
            yield inflater.flush()
            raise EOFError("compressed file ended before the end-of-stream marker")


def check_nifti_file(path: str | os.PathLike, subject_id: str | None = None) -> None:
    """Refuse a truncated or damaged NIfTI file and one whose float voxels are NaN.

    SimpleITK reads a cut ``.nii``/``.nii.gz`` without complaint (missing voxels become 0
    HU) and turns NaN voxels into 0, so this reads the (decompressed) stream once: its
    length must reach what the header promises, the gzip checksum must match, and float
    data must be finite. Raises :class:`CTLoadError` with field ``file size``,
    ``file`` (damaged gzip data) or ``pixel values``.

    Example:
        >>> check_nifti_file("case01.nii.gz", "case01")     # doctest: +SKIP
    """
    path = Path(path)
    gz = path.name.lower().endswith(".gz")
    header = b""
    data_start = data_bytes = 0
    dtype = None
    n_bad = n_seen = total = 0
    carry = b""
    try:
        for block in _decompressed_blocks(path, gz):
            start, total = total, total + len(block)
            if dtype is None and data_bytes == 0:
                header += block[: max(0, 540 - len(header))]
                if len(header) < 540 and start + len(block) < 540:
                    continue
                data_start, data_bytes, voxel_type = _nifti_header(header, subject_id, path)
                if voxel_type is not None and voxel_type.kind == "f":
                    dtype = voxel_type
                elif not gz:
                    total = path.stat().st_size  # plain file without floats: size is enough
                    break
            if dtype is not None:
                # The part of this block inside the voxel data, whole items only.
                lo = max(data_start - start, 0)
                hi = min(data_start + data_bytes - start, len(block))
                if hi > lo:
                    buf = carry + block[lo:hi]
                    usable = len(buf) - len(buf) % dtype.itemsize
                    values = np.frombuffer(buf[:usable], dtype)
                    n_bad += int(values.size - np.count_nonzero(np.isfinite(values)))
                    n_seen += values.size
                    carry = buf[usable:]
    except CTLoadError:
        raise
    except EOFError:
        needed = data_start + data_bytes
        raise CTLoadError(
            "the file is truncated: its gzip stream ends early, after "
            + (f"{total:,} of the {needed:,} decompressed bytes the header needs ({total / needed:.0%})"
               if needed else f"{total:,} decompressed bytes")
            + "; the missing voxels would silently read as 0 HU",
            subject_id=subject_id, file=path, field="file size", fix=TRUNCATED_FIX,
        ) from None
    except (zlib.error, OSError) as exc:
        raise CTLoadError(
            f"the compressed data is damaged ({exc})",
            subject_id=subject_id, file=path, field="file", fix=TRUNCATED_FIX,
        ) from None
    if data_bytes == 0 and dtype is None:  # a file shorter than 540 bytes (or empty)
        data_start, data_bytes, _ = _nifti_header(header, subject_id, path)
    needed = data_start + data_bytes
    if total < needed:
        raise CTLoadError(
            f"the file is truncated: the header needs {needed:,} bytes ({data_bytes:,} of voxel "
            f"data from offset {data_start}) but the {'decompressed ' if gz else ''}file has "
            f"{total:,} ({total / max(needed, 1):.0%}); the missing voxels would silently read "
            "as 0 HU",
            subject_id=subject_id, file=path, field="file size", fix=TRUNCATED_FIX,
        )
    if n_bad:
        raise CTLoadError(
            f"{n_bad:,} of {n_seen:,} voxel(s) ({n_bad / max(n_seen, 1):.1%}) are NaN or infinite"
            + ("; a large part of the scan is missing" if n_bad > 0.05 * n_seen else "")
            + " (SimpleITK would read them as 0 HU)",
            subject_id=subject_id, file=path, field="pixel values",
            fix="re-export the scan without missing values (NaN), or fill them with -1024 HU",
        )


_MET_TYPE_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2,
                   "MET_INT": 4, "MET_UINT": 4, "MET_LONG": 4, "MET_ULONG": 4,
                   "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8}


def check_metaimage_file(path: str | os.PathLike, subject_id: str | None = None) -> None:
    """Refuse a truncated MHA/MHD file: the data must be as long as the header says.

    Only the text header is parsed and file sizes compared (no pixel data is read);
    SimpleITK's own message for a short file is misleading ("No such file or directory").
    """
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(65536)
    fields_: dict[str, str] = {}
    header_len = None
    pos = 0
    for line in head.split(b"\n"):
        pos += len(line) + 1
        key, sep, value = line.decode("latin-1").partition("=")
        if not sep:
            continue
        fields_[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            header_len = pos
            break
    data_name = fields_.get("ElementDataFile")
    if header_len is None or not data_name:
        return  # not a header we understand: SimpleITK reports it
    try:
        dims = [int(v) for v in fields_["DimSize"].split()]
        item = _MET_TYPE_BYTES[fields_["ElementType"]]
        channels = int(fields_.get("ElementNumberOfChannels", "1"))
    except (KeyError, ValueError):
        return
    if data_name == "LOCAL":
        data_file, available = path, path.stat().st_size - header_len
    elif data_name.startswith("LIST") or "%" in data_name:
        return  # one file per slice: SimpleITK reports missing ones
    else:
        data_file = path.parent / data_name
        if not data_file.exists():
            return
        available = data_file.stat().st_size
    compressed = fields_.get("CompressedData", "False").lower() == "true"
    if compressed and "CompressedDataSize" not in fields_:
        return
    needed = (int(fields_["CompressedDataSize"]) if compressed
              else int(np.prod(dims, dtype=np.int64)) * item * channels)
    if available < needed:
        raise CTLoadError(
            f"the file is truncated: the header needs {needed:,} bytes of "
            f"{'compressed ' if compressed else ''}image data but {data_file.name} holds "
            f"{max(available, 0):,} ({max(available, 0) / max(needed, 1):.0%})",
            subject_id=subject_id, file=path, field="file size", fix=TRUNCATED_FIX,
        )
