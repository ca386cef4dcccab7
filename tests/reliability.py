"""Reliability check: feed the toolkit each bad input and fault of issue 8 and say what happens.

Run it as ``python tests/reliability.py``, ``python -m tests.reliability`` (from the
repository root) or through ``tests/test_reliability.py``. It prints one table row per
case: the input, the outcome we expect, the outcome we got, PASS/FAIL; the exit status is 1
when a case fails. Everything happens in a temporary folder (``--workdir`` to keep it) on a
two-subject synthetic cohort, in well under 90 s on two cores.

``--only WORD`` runs the cases whose input contains WORD.
"""

from __future__ import annotations

import argparse
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


def _cohort(work: Path):
    """Two small synthetic subjects and an atlas from the first (made once per run)."""
    from drasclr_toolkit.data.synthetic import make_synthetic_cohort
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
    verify = _cli("store", "verify", str(copy), cwd=work)
    ok = ok and verify.returncode == 1 and "damaged" in verify.stdout
    return ok, text + f" | store verify: exit {verify.returncode}"


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
    res = _cli("pretrain", "--store", str(work / "one_subject"), "--out", str(work / "run1"),
               cwd=work)
    ok = (res.returncode == 1 and "at least 2 subjects" in res.stderr
          and "Traceback" not in res.stderr and "Expected more than 1 value" not in res.stderr)
    said = [line for line in res.stderr.splitlines() if "at least 2" in line]
    return ok, f"exit {res.returncode}; " + _short(said[0] if said else res.stderr, 180)


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
    res = _cli("manifest", "scan", "scan_me", "-o", "scanned.csv", cwd=work)
    if res.returncode != 0:
        return False, f"exit {res.returncode}: " + _short(res.stderr, 200)
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
    res = _cli("synthetic", "--n-subjects", "1", "--out", str(folder), "--spacing", "3",
               "--size-scale", "0.4", "--n-jobs", "1", cwd=work)
    unchanged = all(p.read_text() == t for p, t in files.items())
    ok = (res.returncode == 1 and "Traceback" not in res.stderr and "--force" in res.stderr
          and unchanged and not (folder / "ground_truth").exists())
    return ok, (f"exit {res.returncode}, files unchanged: {unchanged}; "
                + _short(res.stderr.strip().splitlines()[-2] if res.stderr.strip() else "", 180))


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


@case("metrics.jsonl damaged in the middle", "ValueError naming file and line")
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


# ----------------------------------------------------------------------------------- run


def run_all(workdir: Path, only: str | None = None, echo: bool = False) -> list[Row]:
    rows = []
    for input_, expected, fn in CASES:
        if only and only.lower() not in input_.lower():
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
    if args.workdir:
        work = Path(args.workdir)
        work.mkdir(parents=True, exist_ok=True)
        rows = run_all(work, args.only, echo=True)
    else:
        with tempfile.TemporaryDirectory(prefix="drasclr_reliability_") as tmp:
            rows = run_all(Path(tmp), args.only, echo=True)
    print(format_table(rows))
    failed = [r for r in rows if r.status == "FAIL"]
    print(f"\n{len(rows) - len(failed)}/{len(rows)} cases as expected "
          f"({time.perf_counter() - start:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
