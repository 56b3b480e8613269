"""A folder of aspcapStar / apStar files (+ an allStar catalogue) → one dataset (``spectrafm build-apogee``).

:func:`build_apogee_dataset` runs these steps, one function each:

1. check the inputs, and that the output folder may be written (``check_output_folder``);
2. find the files (:func:`_find_files`);
3. read the catalogue rows that may be used (:func:`_read_catalogue`) and choose one file and one
   row per star (:func:`_one_file_per_star`);
4. stream the chosen files, split by split, into the dataset (:func:`_write_splits`);
5. write the bad-files report (:class:`BadFilesReport`): every file found that is not in the dataset,
   and why.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, NamedTuple

import numpy as np

from ...output_guard import check_output_folder
from .. import grid
from ..continuum import DEFAULT_CONTINUUM, ContinuumConfig
from ..labels import LABEL_COLUMNS
from ..schema import split_indices, write_dataset
from .catalogue import FILE_NAME, float_or_nan, id_from_name, paper_sample_cuts, read_allstar, row_labels
from .files import DEFAULT_BAD_PIXMASK_BITS, KINDS, PAPER_FLUX_RANGE, read_apogee_file

DEFAULT_SPLITS: dict[str, float] = {"train": 0.8, "validation": 0.1, "test": 0.1}

#: One star to read: (APOGEE_ID, chosen file, its allStar row or None).
Candidate = tuple[str, Path, dict | None]


def build_apogee_dataset(
    spectra_dir: str | Path, out_dir: str | Path, allstar: str | Path | None = None,
    kind: str = "aspcap-observed", paper_cuts: bool = False, seed: int = 0,
    splits: Mapping[str, float] = DEFAULT_SPLITS, progress: bool = True, overwrite: bool = False,
    batch_size: int = 64, bad_bits: tuple[int, ...] = DEFAULT_BAD_PIXMASK_BITS,
    continuum: ContinuumConfig = DEFAULT_CONTINUUM,
):
    """A folder of aspcapStar or apStar files (+ optional allStar catalogue) → one ``DatasetDict``.

    Files: ``aspcapStar-*.fits[.gz]`` (kinds ``aspcap-observed`` / ``aspcap-synthetic``) or
    ``apStar-*.fits[.gz]`` (kind ``apstar``) anywhere under ``spectra_dir``; the APOGEE_ID comes from
    the file name. With ``allstar``, labels, their errors and SNR come from the catalogue row (they
    override the file's HDU 4 / header); with ``paper_cuts`` only rows passing
    :func:`~.catalogue.paper_sample_cuts` are used (a star with no catalogue row cannot be checked and
    is excluded). Without ``allstar`` labels come from the file (aspcapStar HDU 4) or are NaN (apStar).
    A star with several files (two fields or telescopes) uses the one whose ``<TELESCOPE>/<FIELD>``
    folders match its catalogue row, else the first in path order. Stars are split reproducibly
    (``split_indices(n, splits, seed)`` over the sorted IDs); a file that fails to read (corrupt,
    truncated, missing HDU, wrong grid, all-zero) is skipped. ``bad_bits`` and ``continuum`` apply
    to apStar files only.

    Every file that is not in the dataset is listed with its reason in ``<out_dir>/bad_files.json``
    (``bad``: unreadable files; ``excluded``: cut, duplicate, or no catalogue row), with counts and
    the per-cut summary. If no file at all is usable, the report is written to
    ``<out_dir>.bad_files.json`` and a ValueError is raised.

    Returns the saved ``DatasetDict`` (memory-mapped).
    """
    spectra_dir, out_dir = Path(spectra_dir), Path(out_dir)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not spectra_dir.is_dir():
        raise FileNotFoundError(f"spectra folder {spectra_dir} does not exist")
    if paper_cuts and allstar is None:
        raise ValueError("paper_cuts needs the allStar catalogue (--allstar): the cuts use its flags and SNR")
    check_output_folder(out_dir, overwrite=overwrite, inputs=[spectra_dir, allstar])
    files = _find_files(spectra_dir, kind)
    catalogue = None if allstar is None else _read_catalogue(allstar, paper_cuts)
    report = BadFilesReport(kind, len(files),
                            paper_cut_summary=None if catalogue is None else catalogue.cut_summary)
    candidates = _one_file_per_star(files, catalogue, paper_cuts, report)
    if not candidates:
        report.fail(out_dir, f"none of the {len(files)} files under {spectra_dir} is usable")
    read = partial(read_apogee_file, kind=kind,
                   **({"bad_bits": bad_bits, "continuum": continuum} if kind == "apstar" else {}))
    metadata = _metadata(kind, spectra_dir, allstar, paper_cuts, report.paper_cut_summary, seed, splits,
                         continuum, bad_bits)
    dataset = _write_splits(out_dir, candidates, split_indices(len(candidates), splits, seed), read, report,
                            batch_size=batch_size, desc=f"reading {kind} files", progress=progress,
                            metadata=metadata, overwrite=overwrite)
    if report.n_spectra_in_dataset == 0:
        report.fail(out_dir, f"none of the {len(files)} files under {spectra_dir} could be read", remove=out_dir)
    report.write(out_dir / "bad_files.json")
    return dataset


# --------------------------------------------------------------------------------------------------
# The steps, in order
# --------------------------------------------------------------------------------------------------


def _find_files(spectra_dir: Path, kind: str) -> list[Path]:
    """aspcapStar (or, for kind ``apstar``, apStar) files anywhere under ``spectra_dir``, sorted; at least one."""
    prefix = "apStar" if kind == "apstar" else "aspcapStar"
    files = sorted(p for p in spectra_dir.rglob(f"{prefix}-*") if p.is_file() and FILE_NAME.match(p.name))
    if not files:
        other, other_kind = ("aspcapStar", "aspcap-observed") if kind == "apstar" else ("apStar", "apstar")
        n_other = sum(1 for p in spectra_dir.rglob(f"{other}-*") if p.is_file() and FILE_NAME.match(p.name))
        hint = f"; it holds {n_other} {other}-*.fits files: use --kind {other_kind}" if n_other else ""
        raise ValueError(f"no {prefix}-*.fits files under {spectra_dir} (kind={kind!r}){hint}")
    return files


class _Catalogue(NamedTuple):
    """allStar rows usable per APOGEE_ID (highest SNR first), and why the other stars are not."""

    rows: dict[str, list[dict]]
    reasons: dict[str, str]
    cut_summary: dict | None


def _read_catalogue(allstar: str | Path, paper_cuts: bool) -> _Catalogue:
    """The allStar rows by APOGEE_ID; with ``paper_cuts`` only the rows that pass the paper's cuts."""
    table = read_allstar(allstar)
    ids = np.asarray(table["APOGEE_ID"]).astype(str)
    keep = np.ones(len(table), dtype=bool)
    cut_summary, reasons = None, {}
    if paper_cuts:
        keep, cut_summary, first_failed = paper_sample_cuts(table)
        for i in np.flatnonzero(~keep):
            reasons.setdefault(ids[i], f"paper cut: {first_failed[i]}")
    rows: dict[str, list[dict]] = {}
    for i in np.flatnonzero(keep):
        rows.setdefault(ids[i], []).append({name: table[name][i] for name in table.colnames})
    for star_rows in rows.values():  # highest SNR first (cuts already de-duplicated)
        star_rows.sort(key=lambda r: -np.nan_to_num(float_or_nan(r.get("SNR")), nan=-np.inf))
    return _Catalogue(rows, reasons, cut_summary)


def _one_file_per_star(files: list[Path], catalogue: _Catalogue | None, paper_cuts: bool,
                       report: BadFilesReport) -> list[Candidate]:
    """One file and catalogue row per star, in APOGEE_ID order; files left out go to ``report``.

    With a catalogue, a star's file in the ``<TELESCOPE>/<FIELD>`` folders of its best row wins,
    else the first in path order; the others are listed as duplicates. With ``paper_cuts`` a star
    without a usable row is excluded; without, it is kept (counted in the report) with the file's labels.
    """
    by_id: dict[str, list[Path]] = {}
    for path in files:
        by_id.setdefault(id_from_name(path), []).append(path)
    candidates: list[Candidate] = []
    for apogee_id in sorted(by_id):
        paths, row = by_id[apogee_id], None
        if catalogue is not None:
            rows = catalogue.rows.get(apogee_id)
            if not rows:
                if paper_cuts:
                    reason = catalogue.reasons.get(apogee_id, "no allStar row for this APOGEE_ID")
                    report.excluded.extend({"path": str(p), "id": apogee_id, "reason": reason} for p in paths)
                    continue
                report.n_kept_without_allstar_row += 1
            else:
                row = rows[0]
                paths = _matching_folder_first(paths, row)
        chosen = paths[0]
        report.excluded.extend(
            {"path": str(p), "id": apogee_id, "reason": f"duplicate APOGEE_ID (using {chosen})"} for p in paths[1:]
        )
        candidates.append((apogee_id, chosen, row))
    return candidates


def _matching_folder_first(paths: list[Path], row: Mapping) -> list[Path]:
    """``paths`` with those in the row's ``<TELESCOPE>/<FIELD>`` folders first (order kept otherwise)."""
    telescope, field_name = str(row.get("TELESCOPE", "")).strip(), str(row.get("FIELD", "")).strip()
    matching = [p for p in paths if p.parent.name == field_name and p.parent.parent.name == telescope]
    return matching + [p for p in paths if p not in matching]


def _write_splits(out_dir: Path, candidates: list[Candidate], assignment: Mapping[str, np.ndarray],
                  read: Callable[[Path], dict], report: BadFilesReport, *, batch_size: int, desc: str,
                  progress: bool, metadata: dict, overwrite: bool):
    """Stream each split's stars (read, then stacked in batches) into the dataset at ``out_dir``.

    ``assignment``: split name → indices into ``candidates``. Files are read lazily, split by split,
    while :func:`~spectrafm_hf.data.schema.write_dataset` writes, so memory is one batch.
    """
    from tqdm.auto import tqdm

    bar = tqdm(total=len(candidates), desc=desc, unit="file", disable=not progress)

    def batches(indices: np.ndarray) -> Iterator[dict]:
        records = _read_records((candidates[i] for i in indices), read, report, bar.update)
        return _stack_in_batches(records, batch_size)

    try:
        return write_dataset(
            out_dir, {name: (lambda idx=idx: batches(idx)) for name, idx in assignment.items()},
            wavelength=grid.apogee_wavelength(), metadata=metadata, overwrite=overwrite,
        )
    finally:
        bar.close()


def _read_records(candidates: Iterable[Candidate], read: Callable[[Path], dict], report: BadFilesReport,
                  tick: Callable[[int], object]) -> Iterator[dict]:
    """Each star's record (catalogue labels over the file's); unreadable files go to ``report.bad``."""
    for apogee_id, path, row in candidates:
        tick(1)
        try:
            record = read(path)
        except ValueError as problem:
            report.bad.append({"path": str(path), "id": apogee_id, "reason": str(problem)})
            continue
        record["id"] = apogee_id
        if row is not None:
            record.update(row_labels(row))
        report.n_spectra_in_dataset += 1
        yield record


def _stack_in_batches(records: Iterator[dict], batch_size: int) -> Iterator[dict]:
    """Records → batches of ``batch_size`` (the last may be shorter) with one array per column."""
    pending: list[dict] = []
    for record in records:
        pending.append(record)
        if len(pending) == batch_size:
            yield _stack(pending)
            pending = []
    if pending:
        yield _stack(pending)


def _stack(records: list[dict]) -> dict:
    """Records → one batch: ``id`` (B,), ``flux``/``flux_err``/``mask`` (B, 7514), float32 label columns."""
    batch = {"id": np.array([r["id"] for r in records])}
    for name in ("flux", "flux_err", "mask"):
        batch[name] = np.stack([r[name] for r in records])
    for name in LABEL_COLUMNS:
        batch[name] = np.array([r[name] for r in records], dtype=np.float32)
    return batch


def _metadata(kind: str, spectra_dir: Path, allstar, paper_cuts: bool, cut_summary: dict | None, seed: int,
              splits: Mapping[str, float], continuum: ContinuumConfig, bad_bits: tuple[int, ...]) -> dict:
    """Provenance stored with the dataset (JSON-able)."""
    return {
        "source": "apogee-dr17", "kind": kind, "spectra_dir": str(spectra_dir),
        "allstar": None if allstar is None else str(allstar), "paper_cuts": paper_cuts,
        "cut_summary": cut_summary, "seed": seed, "splits": dict(splits),
        "flux_range": list(PAPER_FLUX_RANGE),
        "continuum": None if kind != "apstar"
        else vars(continuum) | {"method": "per-chip Chebyshev, asymmetric sigma clip"},
        "bad_pixmask_bits": list(bad_bits) if kind == "apstar" else None,
    }


# --------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------


def run_build_apogee(args) -> int:
    """``spectrafm build-apogee``: args ``spectra_dir, allstar, kind, out, paper_cuts, seed, overwrite``."""
    dataset = build_apogee_dataset(
        args.spectra_dir, args.out, allstar=args.allstar, kind=args.kind, paper_cuts=args.paper_cuts,
        seed=args.seed, overwrite=args.overwrite, progress=not getattr(args, "no_progress", False),
        **({"bad_bits": _parse_bits(args.bad_bits)} if getattr(args, "bad_bits", None) else {}),
    )
    report = json.loads((Path(args.out) / "bad_files.json").read_text())
    sizes = ", ".join(f"{name}: {len(split)}" for name, split in dataset.items())
    print(f"wrote {args.out} ({sizes}); {report['n_bad']} bad and {report['n_excluded']} excluded files "
          f"listed in {Path(args.out) / 'bad_files.json'}")
    return 0


def _parse_bits(text: str) -> tuple[int, ...]:
    """'0-7,12' → (0, 1, ..., 7, 12); a clear error for anything else."""
    bits = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                bits.extend(range(lo, hi + 1))
            else:
                bits.append(int(part))
        except ValueError:
            raise ValueError(f"--bad-bits: cannot parse {part!r} in {text!r}; use e.g. '0-7,12'") from None
    if any(not 0 <= b < 32 for b in bits):
        raise ValueError(f"--bad-bits: APOGEE_PIXMASK bits are 0..31, got {text!r}")
    return tuple(sorted(set(bits)))


# --------------------------------------------------------------------------------------------------
# The bad-files report
# --------------------------------------------------------------------------------------------------


@dataclass
class BadFilesReport:
    """What ``bad_files.json`` holds: counts, and every file found that is not in the dataset, and why.

    ``bad``: files that could not be read; ``excluded``: files left out on purpose (paper cut,
    duplicate APOGEE_ID, no catalogue row); each entry ``{"path", "id", "reason"}``.
    """

    kind: str
    n_files_found: int
    n_spectra_in_dataset: int = 0
    n_kept_without_allstar_row: int = 0
    paper_cut_summary: dict | None = None
    bad: list[dict] = field(default_factory=list)
    excluded: list[dict] = field(default_factory=list)

    def write(self, path: Path) -> None:
        """Write the report as JSON (the key order is part of the format)."""
        report = {
            "kind": self.kind,
            "n_files_found": self.n_files_found,
            "n_spectra_in_dataset": self.n_spectra_in_dataset,
            "n_bad": len(self.bad),
            "n_excluded": len(self.excluded),
            "n_kept_without_allstar_row": self.n_kept_without_allstar_row,
            "paper_cut_summary": self.paper_cut_summary,
            "bad": self.bad,
            "excluded": self.excluded,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1))

    def fail(self, out_dir: Path, problem: str, remove: Path | None = None):
        """Write the report beside ``out_dir`` (as ``<out_dir>.bad_files.json``), remove ``remove``, raise."""
        report_path = _free_report_path(out_dir)
        self.write(report_path)
        if remove is not None:
            shutil.rmtree(remove, ignore_errors=True)
        raise ValueError(f"{problem}; see {report_path}")


def _is_bad_files_report(path: Path) -> bool:
    """True if ``path`` holds a report this command wrote (safe to replace with a newer one)."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and {"kind", "n_files_found", "bad"} <= set(report)


def _free_report_path(out_dir: Path) -> Path:
    """``<out_dir>.bad_files.json`` beside ``out_dir``, or ``<out_dir>.bad_files.<k>.json`` when a file of
    that name exists that this command did not write (a user's file is never replaced)."""
    candidate = out_dir.parent / f"{out_dir.name}.bad_files.json"
    k = 1
    while candidate.exists() and not _is_bad_files_report(candidate):
        candidate = out_dir.parent / f"{out_dir.name}.bad_files.{k}.json"
        k += 1
    return candidate
