"""Reliability check: feed the toolkit each bad input and fault (issues 8 and 20) and say what happens.

Run it as ``python tests/reliability.py``, ``python -m tests.reliability`` (from the
repository root) or through ``tests/test_reliability.py``. It prints one table row per
case: the input, the outcome we expect, the outcome we got, PASS/FAIL; the exit status is 1
when a case fails. Everything happens in a temporary folder (``--workdir`` to keep it) on a
two-subject synthetic cohort. Cases that need a read-only or full file system mount a small
tmpfs (root only; skipped elsewhere).

``--only WORD`` runs the cases whose input contains WORD (``A|B``: either).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a plain script
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

TINY = {"spacing": 2.0, "interpolator": "linear",
        "registration": {"reg_spacing": 4.0, "iterations": 100}}


@dataclass
class Row:
    input: str
    expected: str
    outcome: str = ""
    status: str = ""  # PASS, FAIL or SKIP
    seconds: float = 0.0


CASES: list[tuple[str, str, Callable[[Path], tuple[bool | None, str]]]] = []


def case(input_: str, expected: str):
    """Register a case: ``fn(workdir) -> (passed or None to skip, outcome text)``."""
    def register(fn):
        CASES.append((input_, expected, fn))
        return fn
    return register


# ------------------------------------------------------------------------ shared material


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "drasclr_toolkit.cli.main", *args], cwd=cwd,
                          env=_env(), capture_output=True, text=True, timeout=120)


def _drasclr(*args: str, cwd: Path, seconds: int = 300) -> tuple[int | str, str, str]:
    """``drasclr ARGS`` run in this process through the CLI's own ``main`` (its one error
    path, exit status and messages) without the 5-15 s start of a new interpreter on a
    loaded machine. Returns ``(exit status, stdout, stderr)``; an exception that escapes
    ``main`` (a bug) gives status ``"traceback"`` and its traceback in stderr. A command
    still running after ``seconds`` (a hang) is interrupted by SIGALRM: status ``"hang"``."""
    import contextlib
    import io

    from drasclr_toolkit.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    os.chdir(cwd)
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(seconds)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc: int | str = main(list(args))
            except SystemExit as exc:
                rc = exc.code if isinstance(exc.code, int) else 1
            except _Hang:
                rc = "hang"
            except Exception:  # noqa: BLE001 - a traceback is the outcome we test against
                rc = "traceback"
                err.write("Traceback (most recent call last):\n" + traceback.format_exc())
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        os.chdir(old)
    return rc, out.getvalue(), err.getvalue()


class _Hang(BaseException):
    """Raised by SIGALRM in a command that runs past its time (e.g. blocked on a FIFO)."""


def _on_alarm(signum, frame):
    raise _Hang()


def _said(rc, err: str, expect_rc, *words: str) -> tuple[bool, str]:
    """A clean refusal: exit ``expect_rc``, no traceback, every word in the message."""
    missing = [w for w in words if w not in err]
    ok = rc == expect_rc and "Traceback" not in err and not missing
    line = next((ln for ln in err.splitlines() if "error" in ln or "failed" in ln), err.strip())
    text = f"exit {rc}; " + _short(line, 200)
    if missing:
        text += f" [missing: {missing}]"
    if "Traceback" in err:
        text += " [traceback: " + _short(err.strip().splitlines()[-1], 120) + "]"
    return ok, text


def _cohort(work: Path):
    """Two small synthetic subjects and an atlas from the first (made once per run)."""
    from drasclr_toolkit.datasets.synthetic import make_synthetic_cohort
    from drasclr_toolkit.preprocess.pipeline import build_default_atlas

    if work in _COHORTS:
        return _COHORTS[work]
    manifest = make_synthetic_cohort(2, work / "cohort", seed=7, spacing=2.0, size_scale=0.6,
                                     n_jobs=1)
    build_default_atlas(manifest, work / "atlas_run", TINY, reference="syn000")
    _COHORTS[work] = manifest, work / "atlas_run" / "atlas"
    return _COHORTS[work]


_COHORTS: dict[Path, tuple] = {}


def _store(work: Path) -> Path:
    """A finished two-subject patch store (made by the kill/resume cases, else here)."""
    from drasclr_toolkit.preprocess.pipeline import run_preprocessing

    out = work / "killed"
    if not (out / "subjects" / "syn001.json").exists():
        manifest, atlas = _cohort(work)
        run_preprocessing(manifest.path, atlas, out, TINY, n_jobs=1, progress=False)
    return out


def _damaged_copy(work: Path, name: str) -> Path:
    copy = work / name
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(_store(work), copy)
    return copy


def _expect_error(fn, error_type, *must_contain: str) -> tuple[bool, str]:
    try:
        fn()
    except error_type as exc:
        msg = str(exc)
        missing = [m for m in must_contain if m not in msg]
        short = msg if len(msg) < 230 else msg[:227] + "..."
        return not missing, (f"{type(exc).__name__}: {short}" +
                             (f" [missing: {missing}]" if missing else ""))
    except Exception as exc:  # noqa: BLE001
        return False, f"other error {type(exc).__name__}: {str(exc)[:200]}"
    return False, "no error: the damage went unnoticed"


def _short(text: str, n: int = 230) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


# ------------------------------------------------------------------------------ CT inputs


def _cut_copy(work: Path, fraction: float) -> Path:
    manifest, _ = _cohort(work)
    src = Path(manifest.image_path("syn000"))
    data = src.read_bytes()
    dst = work / f"cut_{int(fraction * 100)}.nii.gz"
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


@case("NIfTI (.nii.gz) truncated at 50 %", "CTLoadError, field 'file size'")
def truncated_50(work: Path):
    from drasclr_toolkit.data import CTLoadError, load_ct

    path = _cut_copy(work, 0.5)
    return _expect_error(lambda: load_ct(path, subject_id="syn000"), CTLoadError,
                         "'file size'", "syn000", str(path), "What to do")


@case("NIfTI (.nii.gz) truncated at 90 %", "CTLoadError, field 'file size'")
def truncated_90(work: Path):
    from drasclr_toolkit.data import CTLoadError, load_ct

    path = _cut_copy(work, 0.9)
    return _expect_error(lambda: load_ct(path, subject_id="syn000"), CTLoadError,
                         "'file size'", "syn000", str(path), "What to do")


@case("float NIfTI with 12 % NaN voxels", "CTLoadError, field 'pixel values'")
def nan_nifti(work: Path):
    import SimpleITK as sitk

    from drasclr_toolkit.data import CTLoadError, load_ct

    manifest, _ = _cohort(work)
    image = sitk.Cast(sitk.ReadImage(str(manifest.image_path("syn000"))), sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(image)
    arr[np.random.default_rng(0).random(arr.shape) < 0.12] = np.nan
    nan_image = sitk.GetImageFromArray(arr)
    nan_image.CopyInformation(image)
    path = work / "nan.nii.gz"
    sitk.WriteImage(nan_image, str(path))
    return _expect_error(lambda: load_ct(path, subject_id="syn000"), CTLoadError,
                         "'pixel values'", "NaN", str(path), "What to do")


# -------------------------------------------------------------------- interrupted runs


def _children(pid: int) -> list[int]:
    """Live child processes of ``pid`` that are multiprocessing workers (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid and b"spawn_main" in cmd:  # not the resource tracker
            found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for p in folder.rglob("*"):
        try:
            st = p.stat()
        except OSError:
            continue
        if p.is_file():
            out[str(p)] = (st.st_mtime_ns, st.st_size)
    return out


@case("kill -9 of `preprocess --jobs 2` while its workers run",
      "workers exit within 5 s; no file written after")
def kill_preprocess(work: Path):
    if not Path("/proc/self/stat").exists():
        return None, "skipped: needs Linux /proc to find the worker processes"
    manifest, atlas = _cohort(work)
    out = work / "killed"
    shutil.rmtree(out, ignore_errors=True)
    code = ("from drasclr_toolkit.preprocess.pipeline import run_preprocessing; "
            f"run_preprocessing({str(manifest.path)!r}, {str(atlas)!r}, {str(out)!r}, "
            f"{TINY!r}, n_jobs=2, progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", code], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.time() + 60
        while time.time() < deadline and len(workers) < 2 and proc.poll() is None:
            time.sleep(0.2)
            workers = _children(proc.pid)
        if len(workers) < 2:
            return False, f"could not see 2 workers (found {len(workers)}; rc {proc.poll()})"
        time.sleep(1.5)  # the workers are loading and resampling their scans now
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        killed_at = time.time()
        while time.time() - killed_at < 25 and any(_alive(w) for w in workers):
            time.sleep(0.1)
        took = time.time() - killed_at
        alive = [w for w in workers if _alive(w)]
        before = _snapshot(out)
        time.sleep(2.0)
        changed = sorted(set(_snapshot(out).items()) ^ set(before.items()))
        ok = not alive and took < 5 and not changed
        text = (f"{len(workers)} workers gone {took:.1f} s after the kill"
                if not alive else f"{len(alive)} worker(s) still running {took:.0f} s later")
        text += "; no file written after" if not changed else f"; {len(changed)} file change(s) after"
        return ok, text
    finally:
        for w in workers:  # never leave our own workers behind
            if _alive(w):
                os.kill(w, signal.SIGKILL)


@case("resume after the kill, with leftover temp files (9 MB .tmp checkpoint, record .tmp)",
      "temp files removed at start; run completes; store verifies")
def leftover_tmp(work: Path):
    from drasclr_toolkit.preprocess.pipeline import run_preprocessing
    from drasclr_toolkit.preprocess.store import PatchStore

    manifest, atlas = _cohort(work)
    out = work / "killed"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    (out / "subjects").mkdir(parents=True, exist_ok=True)
    stale = [out / f".last.pt.{dead}.0123abcd.tmp", out / "subjects" / f".syn000.json.{dead}.89abcdef.tmp"]
    stale[0].write_bytes(b"\0" * (9 << 20))
    stale[1].write_text('{"subject_id": "syn0')
    run_preprocessing(manifest.path, atlas, out, TINY, n_jobs=2, progress=False)
    left = [p.name for p in out.rglob(".*.tmp*")]
    rows = PatchStore(out).verify()
    statuses = [r["status"] for r in rows]
    ok = not left and statuses == ["ok", "ok", "ok"]
    return ok, (f"temp files left: {left or 'none'}; store: " +
                ", ".join(f"{r['subject']} {r['status']}" for r in rows[1:]))


# --------------------------------------------------------------------------- patch store


def _read_all(store_dir: Path, sid: str) -> Callable[[], None]:
    from drasclr_toolkit.preprocess.store import PatchStore

    def read() -> None:
        store = PatchStore(store_dir)
        store.read_subject(sid)
        store.read_location(0, list(range(len(store.subject_ids))))
        store.lung_fraction
        store.subject_corners(sid)
    return read


def _store_case(work: Path, name: str, array: str, damage: Callable[[Path], None]):
    from drasclr_toolkit.preprocess.store import PatchStore, StoreError

    copy = _damaged_copy(work, name)
    store = PatchStore(copy)
    file = store.chunk_file(array, "syn001")
    damage(file)
    ok, text = _expect_error(_read_all(copy, "syn001"), StoreError, "syn001", str(file),
                             f"'{array}'", "What to do")
    rc, out, _ = _drasclr("store", "verify", str(copy), cwd=work)
    ok = ok and rc == 1 and "damaged" in out
    return ok, text + f" | store verify: exit {rc}"


@case("patch store: a subject's shard file deleted", "StoreError naming subject, file, array")
def deleted_chunk(work: Path):
    return _store_case(work, "store_deleted", "patches", lambda f: f.unlink())


@case("patch store: a subject's shard file emptied (0 bytes)", "StoreError naming subject, file, array")
def emptied_chunk(work: Path):
    return _store_case(work, "store_emptied", "patches", lambda f: f.write_bytes(b""))


def _flip(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x10
    file.write_bytes(bytes(data))


@case("patch store: one bit flipped in a shard file", "StoreError naming subject, file, array")
def flipped_bit(work: Path):
    return _store_case(work, "store_flipped", "patches", _flip)


@case("patch store: a subject's lung-fraction file deleted", "StoreError naming subject, file, array")
def deleted_lung_fraction(work: Path):
    return _store_case(work, "store_no_lf", "lung_fraction", lambda f: f.unlink())


@case("patch store with one subject, checked for pretraining",
      "StoreError: needs >= 2 subjects, names the store")
def one_subject(work: Path):
    import SimpleITK as sitk

    from drasclr_toolkit.preprocess.atlas import Atlas
    from drasclr_toolkit.preprocess.store import PatchStore, StoreError

    atlas = Atlas(sitk.GetImageFromArray(np.ones((16, 16, 16), np.uint8)),
                  np.arange(15).reshape(5, 3), patch_size=8)
    path = work / "one_subject"
    store = PatchStore.create(path, ["s0"], atlas)
    store.write_subject("s0", np.zeros((5, 8, 8, 8), np.int16), np.ones(5), np.zeros((5, 3)),
                        {"subject_id": "s0"})
    return _expect_error(lambda: PatchStore(path).require_subjects(2, "pretraining"),
                         StoreError, "at least 2", str(path), "What to do")


@case("`drasclr pretrain` on a one-subject store",
      "exit 1: needs at least 2 subjects (no BatchNorm error, no traceback)")
def one_subject_pretrain(work: Path):
    one_subject(work)
    rc, _, err = _drasclr("pretrain", "--store", str(work / "one_subject"), "--out",
                          str(work / "run1"), cwd=work)
    ok = (rc == 1 and "at least 2 subjects" in err
          and "Traceback" not in err and "Expected more than 1 value" not in err)
    said = [line for line in err.splitlines() if "at least 2" in line]
    return ok, f"exit {rc}; " + _short(said[0] if said else err, 180)


# ------------------------------------------------------------------------ resumes and data

_ENCODER = dict(width=0.125, rep_dim=8, proj_dim=8, num_experts=2)


def _other_store(work: Path) -> Path:
    """The killed/resumed store with its patches replaced: same ids, other data."""
    from drasclr_toolkit.preprocess.store import PatchStore

    other = _damaged_copy(work, "store_other")
    store = PatchStore(other)
    rng = np.random.default_rng(1)
    for sid in store.subject_ids:
        record = store.subject_record(sid)
        patches = rng.integers(-1000, 240, store.read_subject(sid).shape).astype(np.int16)
        store.write_subject(sid, patches, store.lung_fraction[store.subject_ids.index(sid)],
                            store.subject_corners(sid), record)
    return other


@case("`drasclr embed` re-run into the same --out on a different store",
      "refused, naming subject and file; --recompute-changed redoes it")
def embed_other_store(work: Path):
    from drasclr_toolkit.embed import extract_embeddings
    from drasclr_toolkit.preprocess.store import PatchStore

    out = work / "emb" / "e.npz"
    extract_embeddings(PatchStore(_store(work)), encoder_kwargs=_ENCODER, out_path=out,
                       progress=False)
    other = PatchStore(_other_store(work))
    ok, text = _expect_error(
        lambda: extract_embeddings(other, encoder_kwargs=_ENCODER, out_path=out, progress=False),
        ValueError, "subject syn000", "source checksum", "recompute")
    redone = extract_embeddings(other, encoder_kwargs=_ENCODER, out_path=out, progress=False,
                                recompute_changed=True)
    fresh = extract_embeddings(other, encoder_kwargs=_ENCODER, progress=False)
    same = bool(np.allclose(redone.patch, fresh.patch, atol=1e-5))
    return ok and same, text + f" | recomputed equals a fresh run: {same}"


@case("`drasclr pretrain` resumed with a different --store",
      "refused (store_fingerprint); --allow-store-change resumes")
def pretrain_other_store(work: Path):
    from drasclr_toolkit.preprocess.store import PatchStore
    from drasclr_toolkit.train.loop import pretrain

    config = dict(_ENCODER, queue_size=8, batch_size=2, max_steps=2, progress=False,
                  device="cpu", checkpoint_every=1)
    run = work / "run_store"
    shutil.rmtree(run, ignore_errors=True)
    pretrain(PatchStore(_store(work)), dict(config), run, stop_after_steps=1)
    other = PatchStore(_other_store(work))
    ok, text = _expect_error(lambda: pretrain(other, dict(config), run), ValueError,
                             "store_fingerprint", "allow_store_change")
    final = pretrain(other, dict(config), run, allow_store_change=True)
    return ok and final.exists(), text


# ------------------------------------------------------------------------ manifests


@case("`drasclr manifest scan` with a relative folder; subjects named NA and missing",
      "manifest written; ids kept as the strings 'NA' and 'missing'")
def manifest_relative_and_na(work: Path):
    import shutil as _sh

    import pandas as pd

    manifest, _ = _cohort(work)
    folder = work / "scan_me"
    folder.mkdir(exist_ok=True)
    first = manifest.table["image"].iloc[0]
    source = Path(first) if Path(first).is_absolute() else Path(manifest.path).parent / first
    for name in ("NA", "missing"):
        _sh.copyfile(source, folder / f"{name}.nii.gz")
    rc, _, err = _drasclr("manifest", "scan", "scan_me", "-o", "scanned.csv", cwd=work)
    if rc != 0:
        return False, f"exit {rc}: " + _short(err, 200)
    ids = pd.read_csv(work / "scanned.csv", dtype=str, keep_default_na=False)["subject_id"]
    ok = sorted(ids) == ["NA", "missing"]
    return ok, f"exit 0; subject ids {sorted(ids)}"


# ------------------------------------------------------------------------ files and logs


@case("run_preprocessing with Manifest(table=...) holding id '../../escape'",
      "refused before writing; nothing outside the output folder")
def escape_id(work: Path):
    import pandas as pd

    from drasclr_toolkit.data.manifest import Manifest
    from drasclr_toolkit.io_utils import UnsafeSubjectIdError
    from drasclr_toolkit.preprocess.pipeline import run_preprocessing

    _, atlas = _cohort(work)
    root = work / "escape_root"
    out = root / "a" / "b" / "out"
    out.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame({"subject_id": ["../../escape"], "image": [str(work / "none.nii.gz")]})
    ok, text = _expect_error(
        lambda: run_preprocessing(Manifest(table=table), atlas, out, TINY, progress=False),
        UnsafeSubjectIdError, "../../escape", "subject_id", "What to do")
    outside = [str(p.relative_to(root)) for p in root.rglob("*")
               if p.is_file() and out not in p.parents]
    return ok and not outside, text + f" | files outside out: {outside or 'none'}"


@case("`drasclr synthetic --out` a folder with the user's manifest.csv, card, images",
      "exit 1, message, no traceback; user files unchanged")
def synthetic_overwrite(work: Path):
    folder = work / "user_folder"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    files = {folder / "manifest.csv": "subject_id,image\nmine,images/mine.nii.gz\n",
             folder / "dataset_card.yaml": "name: my cohort\n",
             folder / "images" / "mine.nii.gz": "not really an image"}
    for path, text in files.items():
        path.write_text(text)
    rc, _, err = _drasclr("synthetic", "--n-subjects", "1", "--out", str(folder), "--spacing",
                          "3", "--size-scale", "0.4", "--n-jobs", "1", cwd=work)
    unchanged = all(p.read_text() == t for p, t in files.items())
    ok = (rc == 1 and "Traceback" not in err and "--force" in err
          and unchanged and not (folder / "ground_truth").exists())
    return ok, (f"exit {rc}, files unchanged: {unchanged}; "
                + _short(err.strip().splitlines()[-2] if err.strip() else "", 180))


@case("metrics.jsonl whose last line is half written (killed mid-write)",
      "warning; earlier steps read")
def torn_metrics(work: Path):
    from drasclr_toolkit.train.metrics import read_metrics

    log = work / "run" / "metrics.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("".join(json.dumps({"step": s, "loss": 3.0 - s / 10}) + "\n"
                           for s in range(1, 6)) + '{"step": 6, "lo')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frame = read_metrics(log.parent)
    ok = frame["step"].tolist() == [1, 2, 3, 4, 5] and any("incomplete" in str(w.message)
                                                          for w in caught)
    return ok, f"{len(frame)} steps read; warning: {_short(str(caught[0].message), 120) if caught else 'none'}"


@case("metrics.jsonl damaged in the middle", "InputError (a ValueError) naming file and line")
def corrupt_metrics(work: Path):
    from drasclr_toolkit.train.metrics import read_metrics

    log = work / "run2" / "metrics.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text('{"step": 1}\n{"step": 2, "lo\x00ss\n{"step": 3}\n')
    return _expect_error(lambda: read_metrics(log), ValueError, str(log), "line 2")


@case("CLI error: `drasclr preprocess --manifest missing.csv`",
      "exit 1, message only; --debug shows the traceback")
def cli_error(work: Path):
    plain = _cli("preprocess", "--manifest", "missing.csv", "--out", "o", cwd=work)
    debug = _cli("--debug", "preprocess", "--manifest", "missing.csv", "--out", "o", cwd=work)
    ok = (plain.returncode == 1 and "Traceback" not in plain.stderr
          and "missing.csv" in plain.stderr and "Traceback" in debug.stderr
          and debug.returncode != 0)
    first = next((line for line in plain.stderr.splitlines() if "error" in line), "")
    return ok, f"exit {plain.returncode}, traceback only with --debug: {ok}; {_short(first, 150)}"


# ============================================================ issue 20: runs, HU, one door
# Each case below reproduces a fault found by trying the toolkit as a careless or unlucky
# user would (issue 20). Commands run in this process through the CLI's main (_drasclr),
# except where a second process is the point (locks, signals).

_SETTINGS = dict(_ENCODER, queue_size=8, batch_size=2, max_steps=2, epochs=1, device="cpu",
                 checkpoint_every=1, log_every=1, cpu_threads=1, num_workers=0, progress=False)


def _config(work: Path) -> Path:
    """A YAML config for the CLI: the tiny preprocessing settings of this script, a tiny
    encoder pretrained for 2 steps, embeddings on the CPU."""
    import yaml

    path = work / "rel.yaml"
    if not path.exists():
        path.write_text(yaml.safe_dump({
            "preprocess": TINY, "pretrain": _SETTINGS,
            "embed": {"device": "cpu", "batch_size": 16,
                      "encoder": {k: _ENCODER[k] for k in ("width", "num_experts")}}}))
    return path


def _run(work: Path) -> Path:
    """A finished 2-step pretraining run (``drasclr pretrain``) on the two-subject store."""
    run = work / "run_done"
    if not (run / "final.pt").exists():
        rc, _, err = _drasclr("pretrain", "--store", str(_store(work)), "--config",
                              str(_config(work)), "--out", str(run), cwd=work)
        if rc != 0:
            raise RuntimeError(f"the shared pretraining run failed: {err[-600:]}")
    return run


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".drasclr.lock"}


# ------------------------------------------------------------------ locks: one writer


_HOLDER: dict[Path, subprocess.Popen] = {}


def _holder(work: Path) -> subprocess.Popen:
    """A second process holding the writer locks of busy_pre/ (preprocess), busy_run/
    (pretrain) and busy.npz (embed), as a run started earlier would."""
    if work in _HOLDER and _HOLDER[work].poll() is None:
        return _HOLDER[work]
    for name in ("busy_pre", "busy_run", "busy.npz.parts"):
        shutil.rmtree(work / name, ignore_errors=True)  # a fresh start for each run
    code = ("import sys, time\n"
            "from drasclr_toolkit.locks import folder_lock\n"
            "from pathlib import Path\n"
            "w = Path(sys.argv[1])\n"
            "with folder_lock(w / 'busy_pre', 'preprocess'), "
            "folder_lock(w / 'busy_run', 'pretrain'), "
            "folder_lock(w / 'busy.npz.parts', 'embed'):\n"
            "    print('held', flush=True)\n"
            "    time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(work)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if line.strip() != "held":
        raise RuntimeError("the lock holder did not start: " + proc.stderr.read()[-500:])
    _HOLDER[work] = proc
    return proc


def _stop_holders() -> None:
    for proc in _HOLDER.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@case("two `drasclr preprocess` into one --out at once (the second with another --reference)",
      "the second exits 1 naming the folder and the first one's pid; nothing written")
def busy_preprocess(work: Path):
    manifest, _ = _cohort(work)
    holder = _holder(work)
    out = work / "busy_pre"
    rc, _, err = _drasclr("preprocess", "--manifest", str(manifest.path), "--out", str(out),
                          "--reference", "syn001", "--config", str(_config(work)),
                          "--no-progress", cwd=work)
    ok, text = _said(rc, err, 1, str(out), f"pid {holder.pid}")
    written = [p.name for p in out.iterdir() if p.name != ".drasclr.lock"]
    return ok and not written, text + f" | files written: {written or 'none'}"


@case("two `drasclr pretrain` into one --out at once",
      "the second exits 1 naming the folder and pid; no config.yaml, no metrics")
def busy_pretrain(work: Path):
    holder = _holder(work)
    out = work / "busy_run"
    rc, _, err = _drasclr("pretrain", "--store", str(_store(work)), "--config",
                          str(_config(work)), "--out", str(out), cwd=work)
    ok, text = _said(rc, err, 1, str(out), f"pid {holder.pid}")
    written = [p.name for p in out.iterdir() if p.name != ".drasclr.lock"]
    return ok and not written, text + f" | files written: {written or 'none'}"


@case("two `drasclr embed` into one --out at once",
      "the second exits 1 naming the file's lock and pid; no .npz written")
def busy_embed(work: Path):
    holder = _holder(work)
    out = work / "busy.npz"
    out.unlink(missing_ok=True)
    rc, _, err = _drasclr("embed", "--store", str(_store(work)), "--config", str(_config(work)),
                          "--out", str(out), "--no-progress", cwd=work)
    ok, text = _said(rc, err, 1, f"pid {holder.pid}")
    return ok and not out.exists(), text + f" | {out.name} written: {out.exists()}"


@case("a lock left by a run killed with kill -9, then the same command",
      "the dead holder's lock is taken over; the run completes (exit 0)")
def stale_lock(work: Path):
    holder = _holder(work)
    holder.kill()
    holder.wait()
    out = work / "busy_run"
    before = (out / ".drasclr.lock").read_text().strip()
    rc, _, err = _drasclr("pretrain", "--store", str(_store(work)), "--config",
                          str(_config(work)), "--out", str(out), cwd=work)
    after = (out / ".drasclr.lock").read_text().strip()
    ok = rc == 0 and (out / "final.pt").exists() and f"pid {os.getpid()}" in after
    return ok, (f"exit {rc}; lock said '{_short(before, 50)}', now '{_short(after, 50)}'"
                + ("" if rc == 0 else " | " + _short(err, 150)))


@case("store.json and atlas/atlas.json disagree (another reference's atlas.json, 2 more landmarks)",
      "store verify exit 1 and every reader refuses, naming both files")
def store_atlas_disagree(work: Path):
    from drasclr_toolkit.preprocess.store import StoreError

    copy = _damaged_copy(work, "store_other_atlas")
    atlas_json = copy / "atlas" / "atlas.json"
    meta = json.loads(atlas_json.read_text())
    meta["n_landmarks"] = int(meta["n_landmarks"]) + 2  # as an atlas of another reference
    meta["info"]["reference_subject"] = "syn001"
    atlas_json.write_text(json.dumps(meta, indent=2))
    ok, text = _expect_error(_read_all(copy, "syn001"), StoreError, str(atlas_json),
                             "store.json", "What to do")
    rc, out, err = _drasclr("store", "verify", str(copy), cwd=work)
    ok = ok and rc == 1 and str(atlas_json) in out + err and "Traceback" not in err
    return ok, text + f" | store verify: exit {rc}, both files named"


# ------------------------------------------------------------------ run records


@case("a finished pretraining run re-run with `--set lr=0.5`",
      "exit 1 naming lr (0.005 then, 0.5 now); final.pt and config.yaml unchanged")
def rerun_other_lr(work: Path):
    run = _run(work)
    before = _files(run)
    rc, _, err = _drasclr("pretrain", "--store", str(_store(work)), "--config",
                          str(_config(work)), "--out", str(run), "--set", "lr=0.5", cwd=work)
    ok, text = _said(rc, err, 1, "lr", "0.5", "--restart")
    same = _files(run) == before
    return ok and same, text + f" | run folder unchanged: {same}"


@case("`drasclr pretrain --restart` of a finished run",
      "old metrics, config, checkpoints, final.pt moved to previous/001; new metrics hold each step once")
def restart_run(work: Path):
    from drasclr_toolkit.train.metrics import read_metrics

    run = work / "run_restart"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(_run(work), run)
    old = _files(run)
    rc, _, err = _drasclr("pretrain", "--store", str(_store(work)), "--config",
                          str(_config(work)), "--out", str(run), "--restart", "--set",
                          "lr=0.001", cwd=work)
    if rc != 0:
        return False, f"exit {rc}: " + _short(err, 200)
    moved = _files(run / "previous" / "001")
    steps = read_metrics(run)["step"].tolist()
    ok = (moved == {k: v for k, v in old.items() if not k.startswith("previous")}
          and steps == sorted(set(steps)) and (run / "final.pt").exists())
    return ok, (f"exit 0; previous/001 holds {sorted(moved)}; new metrics steps {steps}")


@case("pretraining killed before its first checkpoint (metrics of steps 1-8 left), then rerun",
      "steps 1-8 are redone and recorded once (no step twice in metrics.jsonl)")
def kill_before_checkpoint(work: Path):
    from drasclr_toolkit.train.metrics import read_metrics

    run = work / "run_killed_early"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir()
    # What a SIGTERM after step 8 and before checkpoint_every leaves: metrics, no checkpoint.
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 2.0})
                                               + "\n" for s in range(1, 9)))
    rc, _, err = _drasclr("pretrain", "--store", str(_store(work)), "--config",
                          str(_config(work)), "--out", str(run), cwd=work)
    steps = read_metrics(run)["step"].tolist() if rc == 0 else []
    ok = rc == 0 and steps == [1, 2]
    return ok, f"exit {rc}; metrics steps after the rerun {steps}" + (
        "" if rc == 0 else " | " + _short(err, 150))


@case("SIGTERM of `drasclr pretrain` (a second process) after 3 steps, before any checkpoint; "
      "then the same command", "the rerun completes; metrics.jsonl holds steps 1-12 once each")
def sigterm_pretrain(work: Path):
    from drasclr_toolkit.train.metrics import read_metrics

    run = work / "run_sigterm"
    shutil.rmtree(run, ignore_errors=True)
    args = ["pretrain", "--store", str(_store(work)), "--config", str(_config(work)), "--out",
            str(run), "--set", "max_steps=12", "--set", "checkpoint_every=1000"]
    proc = subprocess.Popen([sys.executable, "-m", "drasclr_toolkit.cli.main", *args],
                            cwd=work, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        seen = 0
        while time.time() < deadline and proc.poll() is None and seen < 3:
            time.sleep(0.1)
            log = run / "metrics.jsonl"
            seen = log.read_text().count("\n") if log.exists() else 0
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if seen < 3 or (run / "checkpoints" / "last.pt").exists():
        return False, f"could not stop it between step 3 and a checkpoint (saw {seen} steps)"
    rc, _, err = _drasclr(*args, cwd=work)
    steps = read_metrics(run)["step"].tolist() if rc == 0 else []
    ok = rc == 0 and steps == list(range(1, 13))
    return ok, (f"killed after {seen} logged steps (exit {proc.returncode}); rerun exit {rc}; "
                f"steps {steps[:3]}...{steps[-2:]}, each once: {steps == sorted(set(steps))}"
                + ("" if rc == 0 else " | " + _short(err, 150)))


# ---------------------------------------------- one resumed preprocessing run, four faults


_RUNS: dict[tuple[Path, str], tuple] = {}
_LONG_ID = "scan_" + "x" * 228  # 233 characters + .nii.gz = 240


def _rescanned(work: Path):
    """Resume the finished two-subject store with syn001's scan replaced by another (the
    same subject list; syn001's file now holds syn000's scan). Returns (exit status,
    stderr, store folder, syn001's patches before)."""
    import pandas as pd

    from drasclr_toolkit.preprocess.store import PatchStore

    if (work, "rescan") in _RUNS:
        return _RUNS[work, "rescan"]
    manifest, _ = _cohort(work)
    out = _damaged_copy(work, "store_rescanned")
    before = PatchStore(out).read_subject("syn001").copy()
    images = work / "rescanned_images"
    shutil.rmtree(images, ignore_errors=True)
    images.mkdir()
    syn000 = Path(manifest.image_path("syn000"))
    shutil.copy2(manifest.image_path("syn001"), images / "syn001.nii.gz")
    shutil.copyfile(syn000, images / "syn001.nii.gz")  # another scan copied over syn001's
    path = work / "rescanned.csv"
    pd.DataFrame({"subject_id": ["syn000", "syn001"],
                  "image": [str(syn000), str(images / "syn001.nii.gz")]}).to_csv(path, index=False)
    rc, _, err = _drasclr("preprocess", "--manifest", str(path), "--atlas", str(out / "atlas"),
                          "--out", str(out), "--config", str(_config(work)), "--no-progress",
                          cwd=work, seconds=240)
    _RUNS[work, "rescan"] = rc, err, out, before
    return _RUNS[work, "rescan"]


def _odd_run(work: Path):
    """Preprocess a manifest of two odd rows: a scan whose file name has 240 characters in a
    folder named with spaces, unicode and quotes, and a FIFO. Returns (exit status,
    stderr, store folder, manifest path)."""
    import pandas as pd

    if (work, "odd") in _RUNS:
        return _RUNS[work, "odd"]
    manifest, atlas = _cohort(work)
    odd = work / "scans with spaces ü 'quoted' \"x\""
    shutil.rmtree(odd, ignore_errors=True)
    odd.mkdir()
    long_scan = odd / f"{_LONG_ID}.nii.gz"
    shutil.copyfile(manifest.image_path("syn000"), long_scan)
    fifo = odd / "pipe.nii.gz"
    os.mkfifo(fifo)
    path = work / "odd.csv"
    pd.DataFrame({"subject_id": [_LONG_ID, "piped"],
                  "image": [str(long_scan), str(fifo)]}).to_csv(path, index=False)
    out = work / "store_odd"
    shutil.rmtree(out, ignore_errors=True)
    rc, _, err = _drasclr("preprocess", "--manifest", str(path), "--atlas", str(atlas),
                          "--out", str(out), "--config", str(_config(work)), "--no-progress",
                          cwd=work, seconds=240)
    _RUNS[work, "odd"] = rc, err, out, path
    return _RUNS[work, "odd"]


@case("preprocess resumed after another scan was copied over syn001's file",
      "syn001 is redone (scan changed), its patches replaced; syn000 kept")
def replaced_scan(work: Path):
    from drasclr_toolkit.preprocess.store import PatchStore

    rc, err, out, before = _rescanned(work)
    store = PatchStore(out)
    record = store.subject_record("syn001") if "syn001" in store.subject_ids else {}
    now = store.read_subject("syn001") if record else None
    changed = now is not None and (now.shape != before.shape or not np.array_equal(now, before))
    return changed, (f"exit {rc}; syn001 patches replaced: {changed}; "
                     f"syn000 kept: {'syn000' in store.subject_ids}")


@case("a scan file name of 240 characters, in a folder named with spaces, ü and quotes",
      "that subject is preprocessed (files named by a short name + hash); the cohort goes on")
def long_name(work: Path):
    from drasclr_toolkit.preprocess.store import PatchStore

    rc, err, out, _ = _odd_run(work)
    store = PatchStore(out)
    done = _LONG_ID in store.subject_ids
    longest = max(len(p.name) for p in out.rglob("*"))
    return done and longest <= 255, (f"exit {rc}; the 233-character id preprocessed: {done}; "
                                     f"longest file name in the store {longest} characters")


@case("a manifest row pointing at a FIFO (named pipe), `drasclr preprocess`",
      "no hang: that subject fails with a message, the others are kept, exit 3")
def fifo_preprocess(work: Path):
    from drasclr_toolkit.preprocess.store import PatchStore

    rc, err, out, _ = _odd_run(work)
    store = PatchStore(out)
    failed = store.failures().get("piped", {}).get("reason", "")
    kept = [s[:12] + "..." for s in store.subject_ids]
    ok = (rc == 3 and "Traceback" not in err and "FIFO" in failed
          and list(store.subject_ids) == [_LONG_ID])
    return ok, f"exit {rc}; piped failed: {_short(failed, 140)}; kept {kept}"


@case("a manifest row pointing at a FIFO, `drasclr manifest validate --check-scans`",
      "no hang: exit 1 naming the file (not a regular file), within seconds")
def fifo_validate(work: Path):
    _, _, _, path = _odd_run(work)
    start = time.perf_counter()
    rc, out, err = _drasclr("manifest", "validate", str(path), "--check-scans", cwd=work,
                            seconds=60)
    took = time.perf_counter() - start
    ok, text = _said(rc, out + err, 1, "pipe.nii.gz")
    return ok and took < 30, text + f" | {took:.1f} s"


@case("a 240-character subject id, `drasclr manifest validate`",
      "valid (exit 0) with a warning that the id is long")
def long_id_validate(work: Path):
    import pandas as pd

    _, _, _, path = _odd_run(work)
    table = pd.read_csv(path, dtype=str)
    short = work / "long_id.csv"
    table[table["subject_id"] != "piped"].to_csv(short, index=False)
    rc, out, err = _drasclr("manifest", "validate", str(short), cwd=work)
    said = out + err
    ok = rc == 0 and "long" in said.lower() and "Traceback" not in said
    line = next((ln for ln in said.splitlines() if "long" in ln.lower()), "")
    return ok, f"exit {rc}; " + _short(line, 200)


# ---------------------------------------------------------------- Hounsfield units


def _nifti_with_scaling(work: Path, name: str, slope: float, inter: float) -> Path:
    """syn000's scan with the NIfTI header's scl_slope / scl_inter changed (voxels untouched)."""
    import gzip
    import struct

    manifest, _ = _cohort(work)
    raw = bytearray(gzip.decompress(Path(manifest.image_path("syn000")).read_bytes()))
    raw[112:120] = struct.pack("<2f", slope, inter)
    path = work / name
    path.write_bytes(gzip.compress(bytes(raw), compresslevel=1))
    return path


@case("NIfTI whose scl_slope is 10 instead of 1", "CTLoadError naming scl_slope and its value")
def nifti_slope(work: Path):
    from drasclr_toolkit.data import CTLoadError, load_ct

    path = _nifti_with_scaling(work, "slope10.nii.gz", 10.0, 0.0)
    return _expect_error(lambda: load_ct(path, subject_id="syn000"), CTLoadError,
                         "scl_slope", "10", str(path), "What to do")


@case("NIfTI whose intercept is applied twice (scl_inter -1024 on HU values)",
      "CTLoadError naming scl_inter")
def nifti_intercept(work: Path):
    from drasclr_toolkit.data import CTLoadError, load_ct

    path = _nifti_with_scaling(work, "inter.nii.gz", 1.0, -1024.0)
    return _expect_error(lambda: load_ct(path, subject_id="syn000"), CTLoadError,
                         "scl_inter", str(path), "What to do")


@case("DICOM series with RescaleSlope 10 (instead of 1)",
      "CTLoadError naming RescaleSlope and its value; QC flag wrong_hu")
def dicom_slope(work: Path):
    import SimpleITK as sitk

    from drasclr_toolkit.data import CTLoadError, load_ct

    manifest, _ = _cohort(work)
    image = sitk.ReadImage(str(manifest.image_path("syn000")))
    folder = work / "dicom_slope10"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    # ITK stores (value - intercept) / slope: writing 10 x HU + 9216 stores HU + 1024, what a
    # scanner stores with slope 1; the header's slope 10 then reads as 10 x HU + 9216.
    raw = sitk.Cast(sitk.Cast(image, sitk.sitkInt32) * 10 + 9216, sitk.sitkInt32)
    for k in range(raw.GetDepth()):
        sl = raw[:, :, k]
        pos = raw.TransformIndexToPhysicalPoint((0, 0, k))
        for key, value in {"0008|0060": "CT", "0020|000d": "1.2.3.4", "0020|000e": "1.2.3.4.5",
                           "0008|0018": f"1.2.3.4.5.{k + 1}", "0020|0013": str(k + 1),
                           "0020|0032": "\\".join(f"{v:.4f}" for v in pos),
                           "0020|0037": "1\\0\\0\\0\\1\\0",
                           "0018|0050": str(raw.GetSpacing()[2]),
                           "0028|1052": "-1024", "0028|1053": "10"}.items():
            sl.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"s{k:03d}.dcm"))
        writer.Execute(sl)
    from drasclr_toolkit.probe.qc import load_failure_flag

    ok, text = _expect_error(lambda: load_ct(folder, subject_id="dcm"), CTLoadError,
                             "RescaleSlope", "10", "What to do")
    try:
        load_ct(folder, subject_id="dcm")
        flag = "none"
    except CTLoadError as exc:
        flag = load_failure_flag(exc.field, str(exc))
    return ok and flag == "wrong_hu", text + f" | QC flag: {flag}"


# ---------------------------------------------------------- never overwrite user files


@case("`drasclr embed --out cohort/manifest.csv` (the user's manifest)",
      "exit 1, --force named; the manifest unchanged")
def embed_over_manifest(work: Path):
    manifest, _ = _cohort(work)
    target = Path(manifest.path)
    before = target.read_bytes()
    rc, _, err = _drasclr("embed", "--store", str(_store(work)), "--config", str(_config(work)),
                          "--out", str(target), "--no-progress", cwd=work)
    ok, text = _said(rc, err, 1, str(target), "--force")
    same = target.read_bytes() == before
    return ok and same, text + f" | manifest unchanged: {same}"


def _user_folder(work: Path, name: str, files: dict[str, str]) -> tuple[Path, dict]:
    folder = work / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for rel, text in files.items():
        (folder / rel).write_text(text)
    return folder, _files(folder)


@case("`drasclr preprocess --out` a folder holding the user's qc.csv and config.json",
      "exit 1, --force named; both files unchanged")
def preprocess_over_user(work: Path):
    manifest, _ = _cohort(work)
    folder, before = _user_folder(work, "user_qc", {"qc.csv": "my,qc\n1,2\n",
                                                    "config.json": '{"mine": true}'})
    rc, _, err = _drasclr("preprocess", "--manifest", str(manifest.path), "--out", str(folder),
                          "--config", str(_config(work)), "--no-progress", cwd=work)
    ok, text = _said(rc, err, 1, str(folder), "--force")
    same = _files(folder) == before
    return ok and same, text + f" | user files unchanged: {same}"


@case("Python: make_synthetic_cohort(1, folder) where the user's manifest.csv lies",
      "OutputExistsError naming the folder and overwrite=True; the manifest unchanged")
def synthetic_python_overwrite(work: Path):
    from drasclr_toolkit.datasets.synthetic import make_synthetic_cohort
    from drasclr_toolkit.errors import OutputExistsError

    folder, before = _user_folder(work, "user_manifest", {"manifest.csv": "subject_id,image\n"})
    ok, text = _expect_error(lambda: make_synthetic_cohort(1, folder, spacing=3.0,
                                                           size_scale=0.4, n_jobs=1),
                             OutputExistsError, str(folder), "overwrite=True")
    same = _files(folder) == before
    return ok and same, text + f" | unchanged: {same}"


@case("Python: run_preprocessing(..., out) into a folder of the user's files",
      "OutputExistsError naming the folder and overwrite=True; files unchanged")
def run_preprocessing_overwrite(work: Path):
    from drasclr_toolkit.errors import OutputExistsError
    from drasclr_toolkit.preprocess.pipeline import run_preprocessing

    manifest, atlas = _cohort(work)
    folder, before = _user_folder(work, "user_notes", {"notes.txt": "my notes",
                                                       "qc.csv": "mine"})
    ok, text = _expect_error(lambda: run_preprocessing(manifest.path, atlas, folder, TINY,
                                                       progress=False),
                             OutputExistsError, str(folder), "overwrite=True")
    same = _files(folder) == before
    return ok and same, text + f" | unchanged: {same}"


@case("Python: extract_embeddings(out_path=) the user's CSV file",
      "OutputExistsError naming the file; the file unchanged")
def extract_over_user(work: Path):
    from drasclr_toolkit.embed import extract_embeddings
    from drasclr_toolkit.errors import OutputExistsError
    from drasclr_toolkit.preprocess.store import PatchStore

    folder, before = _user_folder(work, "user_table", {"table.npz": "not an npz of ours"})
    target = folder / "table.npz"
    ok, text = _expect_error(lambda: extract_embeddings(PatchStore(_store(work)),
                                                        encoder_kwargs=_ENCODER,
                                                        out_path=target, progress=False),
                             OutputExistsError, str(target))
    same = _files(folder) == before
    return ok and same, text + f" | unchanged: {same}"


@case("`drasclr pretrain --out` a folder of the user's files",
      "exit 1, --force named; files unchanged, no config.yaml")
def pretrain_over_user(work: Path):
    folder, before = _user_folder(work, "user_run", {"model.pt": "mine", "notes.md": "x"})
    rc, _, err = _drasclr("pretrain", "--store", str(_store(work)), "--config",
                          str(_config(work)), "--out", str(folder), cwd=work)
    ok, text = _said(rc, err, 1, str(folder), "--force")
    same = _files(folder) == before
    return ok and same, text + f" | unchanged: {same}"


@case("`drasclr evaluate --out` a folder of the user's files",
      "exit 1, --force named; files unchanged")
def evaluate_over_user(work: Path):
    feats, labels = _eval_files(work)
    folder, before = _user_folder(work, "user_results", {"results.csv": "mine"})
    rc, _, err = _drasclr("evaluate", "--embeddings", str(feats), "--labels", str(labels),
                          "--out", str(folder), "--targets", "fev1_pp", cwd=work)
    ok, text = _said(rc, err, 1, str(folder), "--force")
    same = _files(folder) == before
    return ok and same, text + f" | unchanged: {same}"


# ------------------------------------------------------- store metadata under checksums


def _edit_record(work: Path, name: str, edit: Callable[[dict], None]) -> tuple[Path, Path]:
    copy = _damaged_copy(work, name)
    path = copy / "subjects" / "syn001.json"
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record, indent=1))
    return copy, path


def _record_case(work: Path, name: str, edit: Callable[[dict], None]):
    from drasclr_toolkit.preprocess.store import PatchStore, StoreError

    copy, path = _edit_record(work, name, edit)
    ok, text = _expect_error(_read_all(copy, "syn001"), StoreError, str(path), "What to do")
    rows = PatchStore(copy).verify()
    status = {r["subject"]: r["status"] for r in rows}
    ok = ok and status.get("syn001") == "damaged" and status.get("syn000") == "ok"
    return ok, text + f" | verify: syn001 {status.get('syn001')}, syn000 {status.get('syn000')}"


@case("subject record edited: in_scan of one landmark flipped", "StoreError naming the record; verify: damaged")
def edit_in_scan(work: Path):
    def edit(r):
        r["in_scan"][0] = not r["in_scan"][0]
    return _record_case(work, "rec_in_scan", edit)


@case("subject record edited: one landmark centre moved 5 mm", "StoreError naming the record; verify: damaged")
def edit_centres(work: Path):
    def edit(r):
        r["centres_mm"][0][0] = float(r["centres_mm"][0][0]) + 5.0
    return _record_case(work, "rec_centres", edit)


@case("subject record edited: the registration transform (translation + 5 mm)", "StoreError naming the record; verify: damaged")
def edit_transform(work: Path):
    def edit(r):
        r["transform"]["translation"][0] = float(r["transform"]["translation"][0]) + 5.0
    return _record_case(work, "rec_transform", edit)


@case("subject record edited: qc.lung_volume_ml", "StoreError naming the record; verify: damaged")
def edit_lung_volume(work: Path):
    def edit(r):
        r["qc"]["lung_volume_ml"] = 5000.0
    return _record_case(work, "rec_volume", edit)


@case("store.json edited: n_landmarks", "StoreError naming store.json; store verify exit 1")
def edit_n_landmarks(work: Path):
    from drasclr_toolkit.preprocess.store import StoreError

    copy = _damaged_copy(work, "store_n_landmarks")
    meta_path = copy / "store.json"
    meta = json.loads(meta_path.read_text())
    meta["n_landmarks"] = int(meta["n_landmarks"]) - 2
    meta_path.write_text(json.dumps(meta))
    ok, text = _expect_error(_read_all(copy, "syn001"), StoreError, str(meta_path), "What to do")
    rc, out, _ = _drasclr("store", "verify", str(copy), cwd=work)
    return ok and rc == 1, text + f" | store verify: exit {rc}"


@case("`drasclr embed` on a store whose record's in_scan was edited",
      "exit 1 naming the record (not a shape error)")
def embed_edited_record(work: Path):
    def edit(r):
        r["in_scan"] = r["in_scan"][:-1]
    copy, path = _edit_record(work, "rec_embed", edit)
    out = work / "rec_embed.npz"
    rc, _, err = _drasclr("embed", "--store", str(copy), "--config", str(_config(work)),
                          "--out", str(out), "--no-progress", cwd=work)
    # syn001 fails with its record named; syn000 is embedded: exit 3, or 1 if refused at once
    ok = rc in (1, 3) and "Traceback" not in err and (str(path) in err or "syn001" in err)
    line = next((ln for ln in err.splitlines() if "syn001" in ln), err.strip())
    return ok, f"exit {rc}; " + _short(line, 200)


def _zarr_case(work: Path, name: str, damage: Callable[[dict, Path], None]):
    from drasclr_toolkit.preprocess.store import PatchStore, StoreError

    copy = _damaged_copy(work, name)
    meta_file = copy / "patches.zarr" / "patches" / "zarr.json"
    damage(json.loads(meta_file.read_text()), meta_file)
    ok, text = _expect_error(_read_all(copy, "syn001"), StoreError, str(meta_file), "What to do")
    rows = PatchStore(copy).verify()
    ok = ok and rows[0]["status"] == "damaged" and str(meta_file) in rows[0]["reason"]
    return ok, text + f" | verify first row: {rows[0]['status']}"


@case("patch store: zarr.json of the patches array truncated", "StoreError naming that zarr.json")
def zarr_truncated(work: Path):
    def damage(meta, file):
        text = file.read_text()
        file.write_text(text[: len(text) // 2])
    return _zarr_case(work, "zarr_cut", damage)


@case("patch store: zarr.json edited to another data_type (uint8)", "StoreError naming that zarr.json")
def zarr_dtype(work: Path):
    def damage(meta, file):
        meta["data_type"] = "uint8"
        file.write_text(json.dumps(meta))
    return _zarr_case(work, "zarr_dtype", damage)


# ------------------------------------------------- file systems: read-only, full disks

@contextlib.contextmanager
def _tmpfs(path: Path, size: str, read_only: bool = False):
    """A small tmpfs mounted at ``path`` (a real read-only or full file system), or None
    where mounting is not allowed (not root): the case is then skipped."""
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size},mode=0777" + (",ro" if read_only else "")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        yield None
        return
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _fill(folder: Path, leave: int) -> Path:
    """Fill the file system of ``folder`` up to ``leave`` free bytes."""
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    filler = folder / "filler.bin"
    with open(filler, "wb") as fh:
        fh.write(b"\0" * max(free - leave, 0))
    return filler


def _read_only_case(work: Path, *command: str, out_arg: str = "--out", **kw):
    with _tmpfs(work / "ro_mount", "1m", read_only=True) as mount:
        if mount is None:
            return None, "skipped: cannot mount a read-only tmpfs (needs root)"
        rc, _, err = _drasclr(*command, out_arg, str(mount / "out"), cwd=work, **kw)
        return _said(rc, err, 1, "read-only", str(mount))


@case("read-only --out: `drasclr preprocess`", "exit 1: read-only, naming the folder; no traceback")
def ro_preprocess(work: Path):
    manifest, _ = _cohort(work)
    return _read_only_case(work, "preprocess", "--manifest", str(manifest.path), "--config",
                           str(_config(work)), "--no-progress")


@case("read-only --out: `drasclr pretrain`", "exit 1: read-only, naming the folder; no traceback")
def ro_pretrain(work: Path):
    return _read_only_case(work, "pretrain", "--store", str(_store(work)), "--config",
                           str(_config(work)))


@case("read-only --out: `drasclr embed`", "exit 1: read-only, naming the folder; no traceback")
def ro_embed(work: Path):
    with _tmpfs(work / "ro_mount", "1m", read_only=True) as mount:
        if mount is None:
            return None, "skipped: cannot mount a read-only tmpfs (needs root)"
        rc, _, err = _drasclr("embed", "--store", str(_store(work)), "--config",
                              str(_config(work)), "--out", str(mount / "e.npz"),
                              "--no-progress", cwd=work)
        return _said(rc, err, 1, "read-only", str(mount))


@case("read-only --out: `drasclr evaluate`", "exit 1: read-only, naming the folder; no traceback")
def ro_evaluate(work: Path):
    feats, labels = _eval_files(work)
    return _read_only_case(work, "evaluate", "--embeddings", str(feats), "--labels",
                           str(labels), "--targets", "fev1_pp")


@case("read-only --out: `drasclr synthetic`", "exit 1: read-only, naming the folder; no traceback")
def ro_synthetic(work: Path):
    return _read_only_case(work, "synthetic", "--n-subjects", "1", "--spacing", "3",
                           "--size-scale", "0.4", "--n-jobs", "1")


@case("read-only -o: `drasclr manifest scan`", "exit 1: read-only, naming the file; no traceback")
def ro_manifest_scan(work: Path):
    manifest, _ = _cohort(work)
    with _tmpfs(work / "ro_mount", "1m", read_only=True) as mount:
        if mount is None:
            return None, "skipped: cannot mount a read-only tmpfs (needs root)"
        rc, _, err = _drasclr("manifest", "scan", str(Path(manifest.path).parent / "images"),
                              "-o", str(mount / "m.csv"), cwd=work)
        return _said(rc, err, 1, "read-only", str(mount))


@case("disk full during pretraining (the checkpoint does not fit)",
      "exit 1: 'the disk is full', naming the file; no traceback, no partial checkpoint")
def full_pretrain(work: Path):
    with _tmpfs(work / "full_run", "2m") as mount:
        if mount is None:
            return None, "skipped: cannot mount a small tmpfs (needs root)"
        _fill(mount, 24 << 10)
        run = mount / "run"
        rc, _, err = _drasclr("pretrain", "--store", str(_store(work)), "--config",
                              str(_config(work)), "--out", str(run), cwd=work)
        ok, text = _said(rc, err, 1, "disk is full", str(run))
        partial = [p.name for p in run.rglob("*.pt")] + [p.name for p in run.rglob("*.tmp")]
        return ok and not partial, text + f" | checkpoint files left: {partial or 'none'}"


@case("disk full during `drasclr embed`",
      "exit 1: 'the disk is full', naming the file; no traceback")
def full_embed(work: Path):
    with _tmpfs(work / "full_emb", "1m") as mount:
        if mount is None:
            return None, "skipped: cannot mount a small tmpfs (needs root)"
        _fill(mount, 8 << 10)  # room for the lock and one part file, not for the rest
        out = mount / "e.npz"
        rc, _, err = _drasclr("embed", "--store", str(_store(work)), "--config",
                              str(_config(work)), "--out", str(out), "--no-progress", cwd=work)
        return _said(rc, err, 1, "disk is full", str(mount))


@case("disk full during `drasclr preprocess` (one subject to write), then space freed and rerun",
      "exit 3 with the subject recorded as failed (disk full); the rerun repairs it, exit 0")
def full_preprocess(work: Path):
    from drasclr_toolkit.preprocess.store import PatchStore

    manifest, _ = _cohort(work)
    with _tmpfs(work / "full_pre", "16m") as mount:
        if mount is None:
            return None, "skipped: cannot mount a small tmpfs (needs root)"
        out = mount / "store"
        shutil.copytree(_store(work), out)
        (out / "subjects" / "syn001.json").unlink()  # syn001 is to be (re)done
        filler = _fill(mount, 96 << 10)
        args = ("preprocess", "--manifest", str(manifest.path), "--atlas", str(out / "atlas"),
                "--out", str(out), "--config", str(_config(work)), "--no-progress")
        rc, _, err = _drasclr(*args, cwd=work)
        reason = PatchStore(out).failures().get("syn001", {}).get("reason", "")
        filler.unlink()
        rc2, _, err2 = _drasclr(*args, cwd=work)
        done = sorted(PatchStore(out).subject_ids)
        ok = (rc == 3 and "disk is full" in reason and rc2 == 0
              and done == ["syn000", "syn001"] and "Traceback" not in err + err2)
        return ok, (f"exit {rc}; syn001: {_short(reason, 120)} | after freeing space: exit "
                    f"{rc2}, done {done}")


# ------------------------------------------------------------------- scans and manifests


@case("a .nii.gz whose header declares 32767 x 32767 x 32767 voxels, `manifest validate --check-scans`",
      "exit 1 within 3 s: field 'image size', nothing read")
def huge_header(work: Path):
    import gzip
    import struct

    manifest, _ = _cohort(work)
    raw = bytearray(gzip.decompress(Path(manifest.image_path("syn000")).read_bytes()))
    raw[40:48] = struct.pack("<4h", 3, 32767, 32767, 32767)
    folder = work / "huge"
    folder.mkdir(exist_ok=True)
    (folder / "huge.nii.gz").write_bytes(gzip.compress(bytes(raw[:352 + (1 << 20)]), 1))
    (folder / "m.csv").write_text("subject_id,image\nhuge,huge.nii.gz\n")
    start = time.perf_counter()
    rc, out, err = _drasclr("manifest", "validate", str(folder / "m.csv"), "--check-scans",
                            cwd=work, seconds=60)
    took = time.perf_counter() - start
    ok, text = _said(rc, out + err, 1, "image size", "32767")
    return ok and took < 3, text + f" | {took:.1f} s"


@case("a manifest with a header and no rows", "validate exit 1; preprocess exit 1 (no subjects), no RuntimeError")
def header_only_manifest(work: Path):
    _, atlas = _cohort(work)
    path = work / "empty.csv"
    path.write_text("subject_id,image\n")
    rc1, out1, err1 = _drasclr("manifest", "validate", str(path), cwd=work)
    rc2, _, err2 = _drasclr("preprocess", "--manifest", str(path), "--atlas", str(atlas),
                            "--out", str(work / "empty_out"), "--config", str(_config(work)),
                            "--no-progress", cwd=work)
    ok, text = _said(rc2, err2, 1, str(path))
    ok = ok and rc1 == 1 and "Traceback" not in out1 + err1
    return ok, f"validate: exit {rc1} | preprocess: " + text


@case("damaged manifests: a duplicate id, a missing image column, a binary file as CSV",
      "ManifestError for each, naming the file and the row or column")
def damaged_manifests(work: Path):
    from drasclr_toolkit.data import Manifest
    from drasclr_toolkit.data.manifest import ManifestError

    manifest, _ = _cohort(work)
    image = manifest.image_path("syn000")
    folder = work / "bad_manifests"
    folder.mkdir(exist_ok=True)
    bad = {"dup.csv": f"subject_id,image\na,{image}\na,{image}\n",
           "nocol.csv": "subject_id,scan\na,x.nii.gz\n"}
    for name, text in bad.items():
        (folder / name).write_text(text)
    (folder / "binary.csv").write_bytes(bytes(range(256)) * 8)
    results = []
    for name in ("dup.csv", "nocol.csv", "binary.csv"):
        ok, text = _expect_error(lambda n=name: Manifest.load(folder / n), ManifestError,
                                 str(folder / name))
        results.append((ok, f"{name}: {'ok' if ok else text}"))
    return all(r[0] for r in results), "; ".join(r[1] for r in results)


@case("`drasclr synthetic --n-subjects 0`", "exit 1 or 2: at least 1 subject; nothing made")
def synthetic_zero(work: Path):
    out = work / "syn_zero"
    rc, _, err = _drasclr("synthetic", "--n-subjects", "0", "--out", str(out), cwd=work)
    made = out.exists() and any(out.iterdir())
    ok = rc in (1, 2) and "Traceback" not in err and not made
    return ok, f"exit {rc}; " + _short(err.strip().splitlines()[-1] if err.strip() else "", 180) + \
        f" | files made: {made}"


# ------------------------------------------------------------------------- checkpoints


def _embed_with_checkpoint(work: Path, ckpt: Path):
    out = work / f"emb_{ckpt.stem}.npz"
    return _drasclr("embed", "--store", str(_store(work)), "--config", str(_config(work)),
                    "--checkpoint", str(ckpt), "--out", str(out), "--no-progress", cwd=work)


@case("`drasclr embed --checkpoint` a final.pt truncated at 60 %",
      "exit 1: CheckpointError naming the file (truncated)")
def truncated_checkpoint(work: Path):
    data = (_run(work) / "final.pt").read_bytes()
    ckpt = work / "cut.pt"
    ckpt.write_bytes(data[: int(len(data) * 0.6)])
    rc, _, err = _embed_with_checkpoint(work, ckpt)
    return _said(rc, err, 1, str(ckpt), "What to do")


@case("`drasclr embed --checkpoint` a CSV renamed .pt",
      "exit 1: not a checkpoint, naming the file (no 'pop from empty list')")
def csv_checkpoint(work: Path):
    ckpt = work / "table.pt"
    ckpt.write_text("subject_id,fev1\na,1\nb,2\n")
    rc, _, err = _embed_with_checkpoint(work, ckpt)
    return _said(rc, err, 1, str(ckpt), "What to do")


@case("`drasclr embed --checkpoint` whose weights are of another width than its encoder_config",
      "exit 1: CheckpointError naming the file and encoder_config")
def other_width_checkpoint(work: Path):
    import torch

    state = torch.load(_run(work) / "final.pt", map_location="cpu", weights_only=True)
    state["encoder_config"] = dict(state["encoder_config"], width=0.25)
    ckpt = work / "wider.pt"
    torch.save(state, ckpt)
    rc, _, err = _embed_with_checkpoint(work, ckpt)
    return _said(rc, err, 1, str(ckpt), "encoder_config")


@case("a checkpoint holding a malicious pickle (code that writes a file when loaded)",
      "refused naming the file; the code never runs; no advice to use weights_only=False")
def malicious_checkpoint(work: Path):
    import pickle

    import torch

    marker = work / "pwned.txt"

    class Evil:
        def __reduce__(self):
            return (Path.write_text, (marker, "ran"))

    ckpt = work / "evil.pt"
    torch.save({"encoder": Evil()}, ckpt, pickle_module=pickle)
    rc, _, err = _embed_with_checkpoint(work, ckpt)
    ok, text = _said(rc, err, 1, str(ckpt))
    ok = ok and not marker.exists() and "weights_only=False" not in err
    return ok, text + f" | code ran: {marker.exists()}"


# ------------------------------------------------------------------- labels, evaluate


def _eval_files(work: Path, n: int = 12) -> tuple[Path, Path]:
    """A feature CSV (4 random features) and a label table (fev1_pp, time, event) of n subjects."""
    import pandas as pd

    feats, labels = work / f"feats{n}.csv", work / f"labels{n}.csv"
    if not feats.exists():
        rng = np.random.default_rng(3)
        ids = [f"p{i:02d}" for i in range(n)]
        pd.DataFrame(rng.normal(size=(n, 4)), columns=list("abcd")).assign(
            subject_id=ids).to_csv(feats, index=False)
        pd.DataFrame({"subject_id": ids, "fev1_pp": rng.normal(70, 15, n).round(1),
                      "time": rng.uniform(1, 10, n).round(2),
                      "event": [i % 2 for i in range(n)]}).to_csv(labels, index=False)
    return feats, labels


def _label_case(work: Path, name: str, change: Callable, *words: str):
    import pandas as pd

    feats, labels = _eval_files(work)
    table = pd.read_csv(labels, dtype={"subject_id": str})
    table = change(table)
    path = work / f"{name}.csv"
    table.to_csv(path, index=False)
    rc, _, err = _drasclr("evaluate", "--embeddings", str(feats), "--labels", str(path),
                          "--out", str(work / f"eval_{name}"), "--targets", "fev1_pp",
                          "--n-repeats", "1", "--n-permutations", "9", cwd=work)
    return _said(rc, err, 1, str(path), *words)


@case("`drasclr evaluate` with event codes 2 and -1", "exit 1: LabelError naming the event column and the values")
def labels_event_codes(work: Path):
    def change(t):
        t.loc[0, "event"], t.loc[1, "event"] = 2, -1
        return t
    return _label_case(work, "ev_codes", change, "event")


@case("`drasclr evaluate` with event 'yes'", "exit 1: LabelError naming the event column")
def labels_event_yes(work: Path):
    def change(t):
        t["event"] = t["event"].astype(object)
        t.loc[0, "event"] = "yes"
        return t
    return _label_case(work, "ev_yes", change, "event", "yes")


@case("`drasclr evaluate` with a subject id twice in the labels", "exit 1: LabelError naming the id")
def labels_duplicate(work: Path):
    import pandas as pd

    def change(t):
        return pd.concat([t, t.iloc[[2]]], ignore_index=True)
    return _label_case(work, "dup_id", change, "p02")


@case("`drasclr evaluate` with follow-up times 0 and negative", "exit 1: LabelError naming the time column")
def labels_bad_time(work: Path):
    def change(t):
        t.loc[0, "time"], t.loc[1, "time"] = 0.0, -3.0
        return t
    return _label_case(work, "bad_time", change, "time")


@case("`drasclr evaluate --embeddings` a truncated .npz", "exit 1: EmbeddingsFileError naming the file")
def truncated_npz(work: Path):
    from drasclr_toolkit.embed import extract_embeddings
    from drasclr_toolkit.preprocess.store import PatchStore

    full = work / "whole.npz"
    if not full.exists():
        extract_embeddings(PatchStore(_store(work)), encoder_kwargs=_ENCODER, out_path=full,
                           progress=False)
    cut = work / "cut_emb.npz"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    _, labels = _eval_files(work)
    rc, _, err = _drasclr("evaluate", "--embeddings", str(cut), "--labels", str(labels),
                          "--out", str(work / "eval_cut"), cwd=work)
    return _said(rc, err, 1, str(cut))


@case("`drasclr evaluate` of a constant target (every fev1_pp 70)",
      "exit 1 said in words: nothing could be evaluated, the target does not vary")
def constant_target(work: Path):
    def change(t):
        t["fev1_pp"] = 70.0
        return t.drop(columns=["time", "event"])
    ok, text = _label_case(work, "constant", change, "nothing could be evaluated")
    return ok and "summarise" not in text, text


@case("`drasclr evaluate` on 3 subjects", "exit 1 said in words: too few subjects")
def three_subjects(work: Path):
    def change(t):
        return t.iloc[:3].drop(columns=["time", "event"])
    ok, text = _label_case(work, "three", change, "nothing could be evaluated")
    return ok and "summarise" not in text, text


# --------------------------------------------------------------------- configs, devices


@case("`drasclr pretrain --config` a YAML file with a syntax error",
      "exit 1: ConfigError naming the file, line and column")
def yaml_syntax(work: Path):
    path = work / "broken.yaml"
    path.write_text("pretrain:\n  lr: 0.01\n  batch_size: [2, 4\n  width: 0.5\n")
    rc, _, err = _drasclr("pretrain", "--store", str(_store(work)), "--config", str(path),
                          "--out", str(work / "run_yaml"), cwd=work)
    return _said(rc, err, 1, str(path), "line", "column")


@case("`drasclr pretrain --set device=cuda` on a machine without a GPU",
      "exit 1 naming device, before anything is written (no config.yaml)")
def device_cuda(work: Path):
    import torch

    if torch.cuda.is_available():
        return None, "skipped: this machine has a GPU"
    out = work / "run_cuda"
    rc, _, err = _drasclr("pretrain", "--store", str(_store(work)), "--config",
                          str(_config(work)), "--out", str(out), "--set", "device=cuda", cwd=work)
    ok, text = _said(rc, err, 1, "device")
    written = sorted(p.name for p in out.rglob("*")) if out.exists() else []
    return ok and not written, text + f" | written: {written or 'nothing'}"


@case("`drasclr pretrain --set batch_size=1`",
      "exit 1 naming batch_size, before anything is written (no config.yaml)")
def batch_one(work: Path):
    out = work / "run_bs1"
    rc, _, err = _drasclr("pretrain", "--store", str(_store(work)), "--config",
                          str(_config(work)), "--out", str(out), "--set", "batch_size=1",
                          cwd=work)
    ok, text = _said(rc, err, 1, "batch_size")
    written = sorted(p.name for p in out.rglob("*")) if out.exists() else []
    return ok and not written, text + f" | written: {written or 'nothing'}"


# ------------------------------------------------------------ runs with failed subjects


@case("`drasclr embed --checkpoint final.pt` on a store with one damaged subject",
      "exit 3: that subject failed (named), the other's vectors kept")
def embed_partial(work: Path):
    from drasclr_toolkit.embed import Embeddings

    copy = _damaged_copy(work, "store_embed_partial")
    from drasclr_toolkit.preprocess.store import PatchStore

    PatchStore(copy).chunk_file("patches", "syn001").unlink()
    out = work / "partial.npz"
    rc, stdout, err = _drasclr("embed", "--store", str(copy), "--config", str(_config(work)),
                               "--checkpoint", str(_run(work) / "final.pt"), "--out", str(out),
                               "--no-progress", cwd=work)
    kept = list(Embeddings.load(out).subject_ids) if out.exists() else []
    ok = rc == 3 and "syn001" in stdout + err and kept == ["syn000"] and "Traceback" not in err
    line = next((ln for ln in (stdout + err).splitlines() if "failed syn001" in ln), "")
    return ok, f"exit {rc}; kept {kept}; " + _short(line, 150)


# ----------------------------------------------------------------------------------- run


def run_all(workdir: Path, only: str | None = None, echo: bool = False) -> list[Row]:
    rows = []
    for input_, expected, fn in CASES:
        if only and not any(w.lower() in input_.lower() for w in only.split("|")):
            continue
        row = Row(input_, expected)
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                passed, row.outcome = fn(workdir)
        except Exception as exc:  # noqa: BLE001 - a crash of a case is its outcome
            passed, row.outcome = False, f"crashed: {type(exc).__name__}: {exc}"
            if echo:
                traceback.print_exc()
        row.status = "SKIP" if passed is None else ("PASS" if passed else "FAIL")
        row.seconds = time.perf_counter() - start
        rows.append(row)
        if echo:
            print(f"  {row.status} {row.seconds:5.1f} s  {row.input}", file=sys.stderr, flush=True)
    return rows


def format_table(rows: list[Row]) -> str:
    """A Markdown table (what the README's reliability section shows)."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| input | expected outcome | outcome | result |", "| --- | --- | --- | --- |"]
    lines += [f"| {cell(r.input)} | {cell(r.expected)} | {cell(r.outcome)} | {r.status} |"
              for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None, help="keep the files here (default: a temp folder)")
    parser.add_argument("--only", default=None, help="run the cases whose input contains this")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    start = time.perf_counter()
    try:
        if args.workdir:
            work = Path(args.workdir)
            work.mkdir(parents=True, exist_ok=True)
            rows = run_all(work, args.only, echo=True)
        else:
            with tempfile.TemporaryDirectory(prefix="drasclr_reliability_") as tmp:
                rows = run_all(Path(tmp), args.only, echo=True)
    finally:
        _stop_holders()
    print(format_table(rows))
    failed = [r for r in rows if r.status == "FAIL"]
    print(f"\n{len(rows) - len(failed)}/{len(rows)} cases as expected "
          f"({time.perf_counter() - start:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
