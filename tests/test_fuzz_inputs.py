"""Fuzz (issue 13): 200 seeded random corruptions of the three files ``spectrafm predict`` reads.

Files: a small ``.npz`` of toy spectra, FITS files (a small binary table of toy spectra, and the vendored
apStar ``.fits.gz``) and a tiny checkpoint's ``model.safetensors``. Corruptions: truncation, flipped
bytes, and re-writes with a wrong dtype or shape (or a missing / renamed / extra array or tensor). Each
case runs ``spectrafm_hf.cli.main(["predict", ...])`` in-process.

The rule every case must pass:

* ``main`` returns an int (no exception escapes) and never 1 ("unexpected error"): damage must be
  recognised as bad input, exit 2 with exactly one error line on stderr and no output file. An error
  raised while reading the damaged file names it (the input file, or the checkpoint folder for weights).
* exit 0 is allowed only when the damage was harmless, judged here independently of the code under test:

  - npz: the damaged archive still decodes (numpy, with zip's CRC checks) to exactly the original
    arrays, or the re-write changed an array to another real (int/float) dtype;
  - FITS table (uncompressed): astropy still reads the same columns with the same formats and shapes
    (a flipped byte inside the data is a valid file with other numbers: nothing can tell); a truncated
    file is never harmless;
  - ``.fits.gz``: only if the gzip stream still decompresses (CRC and length checked) to the original
    bytes, i.e. the flip hit the unprotected gzip header fields (mtime, flags of the compressor, OS);
  - weights: the header (tensor names, dtypes, shapes, offsets) parses to the original table and every
    stored tensor is finite (flipped bytes inside tensor data give another, loadable model: names and
    shapes match, which is all a file without checksums can promise), or the re-write only changed a
    tensor to another floating dtype. Truncation, a changed tensor table, a non-float dtype, a changed
    shape, a missing, renamed or extra tensor must exit 2.

  When the exit code is 0 the output CSV holds one row per spectrum, with finite values unless the
  row is flagged (predict flags, per star, what it will not answer for).
"""

from __future__ import annotations

import csv
import gzip
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from spectrafm_hf.checkpoints import load_model, save_checkpoint
from spectrafm_hf.cli import main
from spectrafm_hf.data.readers import read_spectra

APSTAR = Path(__file__).resolve().parent / "fixtures" / "apStar-dr17-2M19485057+5005279.fits.gz"
N_SPECTRA = 3
#: cases per file kind; 200 in all
N_CASES = {"npz": 65, "fits-table": 50, "apstar-gz": 20, "weights": 65}
BASE_SEED = 20_240_613


@pytest.fixture
def material(tiny_model, feature_extractor, toy, tmp_path):
    """The undamaged files: checkpoint folder, npz, FITS table; plus the original arrays / tensors."""
    from astropy.io import fits

    model_dir = save_checkpoint(tiny_model, feature_extractor, tmp_path / "model")
    arrays = {"wavelength": toy["wavelength"], "flux": toy["flux"][:N_SPECTRA],
              "flux_err": toy["flux_err"][:N_SPECTRA], "mask": toy["mask"][:N_SPECTRA],
              "id": np.array([f"star{i}" for i in range(N_SPECTRA)])}
    npz = tmp_path / "clean.npz"
    np.savez(npz, **arrays)
    n_pixels = toy["wavelength"].size
    table = fits.BinTableHDU.from_columns([
        fits.Column(name="ID", format="10A", array=arrays["id"]),
        fits.Column(name="WAVELENGTH", format=f"{n_pixels}D", array=np.tile(toy["wavelength"], (N_SPECTRA, 1))),
        fits.Column(name="FLUX", format=f"{n_pixels}E", array=arrays["flux"]),
        fits.Column(name="FLUX_ERR", format=f"{n_pixels}E", array=arrays["flux_err"]),
    ])
    table_path = tmp_path / "clean.fits"
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(table_path)
    return {"model": model_dir, "npz": npz, "arrays": arrays, "fits": table_path,
            "weights": (model_dir / "model.safetensors").read_bytes()}


# ---- the damage ---------------------------------------------------------------------------------


def truncate(data: bytes, rng) -> tuple[bytes, str]:
    keep = int(rng.integers(0, len(data)))
    return data[:keep], f"truncated to {keep} of {len(data)} bytes"


def flip(data: bytes, rng, lo: int = 0, hi: int | None = None) -> tuple[bytes, str, list[int]]:
    """XOR 1-4 random bytes in ``[lo, hi)`` with a random non-zero value."""
    hi = len(data) if hi is None else hi
    out = bytearray(data)
    where = sorted(int(i) for i in rng.choice(np.arange(lo, hi), size=int(rng.integers(1, 5)), replace=False))
    for i in where:
        out[i] ^= int(rng.integers(1, 256))
    return bytes(out), f"bytes flipped at {where}", where


def npz_case(material, rng, path: Path) -> tuple[str, bool]:
    """Write a damaged npz at ``path``; return (description, whether exit 0 is allowed)."""
    clean = material["npz"].read_bytes()
    kind = rng.choice(["truncate", "flip", "dtype", "shape", "names"], p=[0.25, 0.35, 0.15, 0.15, 0.10])
    if kind == "truncate":
        data, what = truncate(clean, rng)
        path.write_bytes(data)
        return what, False
    if kind == "flip":
        data, what, _ = flip(clean, rng)
        path.write_bytes(data)
        return what, _decodes_to(path, material["arrays"])
    arrays = dict(material["arrays"])
    name = str(rng.choice(["wavelength", "flux", "flux_err", "mask"]))
    if kind == "dtype":
        dtype = str(rng.choice(["float16", "float64", "int16", "complex64", "bool", "U3", "object"]))
        if dtype == "object":
            values = np.empty(len(arrays[name]), dtype=object)
            values[:] = list(arrays[name])
        else:
            values = arrays[name].astype(dtype)
        arrays[name] = values
        # a mask is bool anyway; an int or float mask means "nonzero = bad"
        harmless = dtype in ("float16", "float64", "int16") or (name == "mask" and dtype == "bool")
        what = f"{name} as {dtype}"
    elif kind == "shape":
        values = arrays[name]
        change = str(rng.choice(["drop-pixels", "extra-axis", "flatten", "transpose", "no-rows"]))
        arrays[name] = {"drop-pixels": lambda v: v[..., : v.shape[-1] - 7], "extra-axis": lambda v: v[None],
                        "flatten": lambda v: v.reshape(-1), "transpose": lambda v: v.T,
                        "no-rows": lambda v: v[:0]}[change](values)
        # a shared (P,) wavelength "transposed" or "flattened" is the same array
        harmless = name == "wavelength" and change in ("transpose", "flatten")
        what = f"{name} {change} -> shape {arrays[name].shape}"
    else:
        change = str(rng.choice(["drop", "rename", "extra-2d"]))
        if change == "drop":
            name = str(rng.choice(["wavelength", "flux"]))
            del arrays[name]
        elif change == "rename":
            arrays[name + "_x"] = arrays.pop(name)
        else:
            arrays["extra"] = np.zeros((N_SPECTRA, 2))
        harmless = False
        what = f"{change} {name}"
    np.savez(path, **arrays)
    return what, harmless


def _decodes_to(path: Path, arrays: dict) -> bool:
    """Whether ``path`` still decodes (numpy; zip CRCs checked) to exactly ``arrays``."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            if sorted(archive.files) != sorted(arrays):
                return False
            for name, values in arrays.items():
                got = archive[name]
                if not isinstance(got, np.ndarray) or got.dtype != values.dtype or not np.array_equal(got, values):
                    return False
    except Exception:  # noqa: BLE001 - the reference decoder: any failure means "damaged"
        return False
    return True


def fits_table_case(material, rng, path: Path) -> tuple[str, bool]:
    from astropy.io import fits

    clean = material["fits"].read_bytes()
    kind = rng.choice(["truncate", "flip-header", "flip-data", "dtype-shape"], p=[0.3, 0.3, 0.25, 0.15])
    if kind == "truncate":
        data, what = truncate(clean, rng)
        path.write_bytes(data)
        return what, False
    if kind in ("flip-header", "flip-data"):
        header_end = _fits_table_data_start(material["fits"])
        lo, hi = (0, header_end) if kind == "flip-header" else (header_end, len(clean))
        data, what, _ = flip(clean, rng, lo, hi)
        path.write_bytes(data)
        return what, _same_table_layout(path, material["fits"])
    arrays = material["arrays"]
    n_pixels = arrays["wavelength"].size
    change = str(rng.choice(["flux-as-text", "flux-complex", "short-flux", "no-flux", "ragged-wavelength"]))
    flux_column = {
        "flux-as-text": fits.Column(name="FLUX", format="8A", array=np.array(["x"] * N_SPECTRA)),
        "flux-complex": fits.Column(name="FLUX", format=f"{n_pixels}C", array=arrays["flux"].astype(np.complex64)),
        "short-flux": fits.Column(name="FLUX", format=f"{n_pixels - 9}E", array=arrays["flux"][:, 9:]),
        "no-flux": fits.Column(name="FLUXES", format=f"{n_pixels}E", array=arrays["flux"]),
        "ragged-wavelength": fits.Column(name="FLUX", format=f"{n_pixels}E", array=arrays["flux"]),
    }[change]
    wavelength = np.tile(arrays["wavelength"], (N_SPECTRA, 1))
    wave_format = f"{n_pixels}D"
    if change == "ragged-wavelength":
        wavelength, wave_format = wavelength[:, :-3], f"{n_pixels - 3}D"
    table = fits.BinTableHDU.from_columns([fits.Column(name="WAVELENGTH", format=wave_format, array=wavelength),
                                           flux_column])
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(path, overwrite=True)
    return change, False


def _fits_table_data_start(path: Path) -> int:
    from astropy.io import fits

    with fits.open(path) as hdul:
        return hdul[1].fileinfo()["datLoc"]


def _same_table_layout(path: Path, clean: Path) -> bool:
    """Whether astropy reads ``path`` (no truncation) as the same table layout as ``clean``."""
    import warnings

    from astropy.io import fits

    def layout(p):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with fits.open(p) as hdul:
                out = [(h.name, None if getattr(h, "columns", None) is None else
                        [(c.name, c.format, np.asarray(h.data[c.name]).shape) for c in h.columns]) for h in hdul]
        if any("truncat" in str(w.message) for w in caught):
            raise ValueError("truncated")
        return out

    try:
        return layout(path) == layout(clean)
    except Exception:  # noqa: BLE001 - the reference reader: any failure means "damaged"
        return False


def apstar_case(material, rng, path: Path) -> tuple[str, bool]:
    clean = APSTAR.read_bytes()
    if rng.random() < 0.5:
        data, what = truncate(clean, rng)
    else:
        data, what, _ = flip(clean, rng, lo=10)  # past the 10-byte gzip header (mtime, OS: not protected)
    path.write_bytes(data)
    try:
        harmless = gzip.decompress(data) == gzip.decompress(clean)
    except Exception:  # noqa: BLE001 - the reference decoder: any failure means "damaged"
        harmless = False
    return what, harmless


def weights_case(material, rng, path: Path) -> tuple[str, bool]:
    clean = material["weights"]
    header_len = struct.unpack("<Q", clean[:8])[0]
    kind = rng.choice(["truncate", "flip-header", "flip-data", "dtype", "shape", "names"],
                      p=[0.2, 0.2, 0.25, 0.15, 0.1, 0.1])
    if kind == "truncate":
        data, what = truncate(clean, rng)
        path.write_bytes(data)
        return what, False
    if kind in ("flip-header", "flip-data"):
        lo, hi = (0, 8 + header_len) if kind == "flip-header" else (8 + header_len, len(clean))
        data, what, _ = flip(clean, rng, lo, hi)
        path.write_bytes(data)
        return what, _same_tensor_table(data, clean) and _all_finite(path)
    tensors = load_file(material["model"] / "model.safetensors")
    names = sorted(tensors)
    name = names[int(rng.integers(len(names)))]
    if kind == "dtype":
        dtype = [torch.float16, torch.bfloat16, torch.float64, torch.int32, torch.int8, torch.bool][
            int(rng.integers(6))]
        tensors[name] = tensors[name].to(dtype)
        harmless = dtype.is_floating_point
        what = f"{name} as {dtype}"
    elif kind == "shape":
        values = tensors[name]
        change = str(rng.choice(["flatten", "extra-axis", "drop-row"]))
        if change == "flatten" and values.ndim == 1:
            change = "extra-axis"
        tensors[name] = {"flatten": lambda v: v.reshape(-1), "extra-axis": lambda v: v[None],
                         "drop-row": lambda v: v[:-1]}[change](values).contiguous()
        harmless = tuple(tensors[name].shape) == tuple(values.shape)
        what = f"{name} {change} -> shape {tuple(tensors[name].shape)}"
    else:
        change = str(rng.choice(["drop", "rename", "extra"]))
        if change == "drop":
            del tensors[name]
        elif change == "rename":
            tensors[name + "_x"] = tensors.pop(name)
        else:
            tensors["extra.weight"] = torch.zeros(3)
        harmless = False
        what = f"{change} {name}"
    save_file(tensors, path, metadata={"format": "pt"})
    return what, harmless


def _tensor_table(data: bytes):
    header_len = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8: 8 + header_len])
    return {k: v for k, v in header.items() if k != "__metadata__"}, header.get("__metadata__")


def _same_tensor_table(data: bytes, clean: bytes) -> bool:
    try:
        return len(data) == len(clean) and _tensor_table(data) == _tensor_table(clean)
    except Exception:  # noqa: BLE001 - the reference parser: any failure means "damaged"
        return False


def _all_finite(path: Path) -> bool:
    try:
        return all(bool(torch.isfinite(t).all()) for t in load_file(path).values() if t.is_floating_point())
    except Exception:  # noqa: BLE001
        return False


# ---- the runs -------------------------------------------------------------------------------------

CASES = {"npz": ("spectra.npz", npz_case), "fits-table": ("spectra.fits", fits_table_case),
         "apstar-gz": (APSTAR.name, apstar_case), "weights": ("model.safetensors", weights_case)}


@pytest.mark.parametrize("kind", list(N_CASES))
def test_random_corruptions_are_refused_or_harmless(kind, material, tmp_path, capsys):
    filename, make = CASES[kind]
    work = tmp_path / "work"
    model = tmp_path / "work-model"
    shutil.copytree(material["model"], model)
    failures = []
    for case in range(N_CASES[kind]):
        rng = np.random.default_rng([BASE_SEED, list(N_CASES).index(kind), case])
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        if kind == "weights":
            damaged, spectra = model / filename, material["npz"]
        else:
            damaged, spectra = work / filename, work / filename
            (model / "model.safetensors").write_bytes(material["weights"])
        what, harmless = make(material, rng, damaged)
        out = work / "out.csv"
        capsys.readouterr()
        try:
            rc = main(["predict", "--model", str(model), "--input", str(spectra), "--request", "FE_H",
                       "--output", str(out), "--device", "cpu"])
        except BaseException as err:  # noqa: BLE001 - that is the failure this test looks for
            failures.append(f"case {case} ({what}): raised {type(err).__name__}: {err}")
            continue
        err = capsys.readouterr().err
        problem = _judge(rc, err, harmless, damaged if kind != "weights" else model, out,
                         reads=lambda damaged=damaged: (load_model(model, device="cpu") if kind == "weights"
                                                        else read_spectra(damaged)))
        if problem:
            failures.append(f"case {case} ({what}): {problem}")
    assert not failures, f"{len(failures)} of {N_CASES[kind]} {kind} cases failed:\n" + "\n".join(failures[:25])


def _judge(rc, err: str, harmless: bool, named: Path, out: Path, reads) -> str | None:
    """None if the outcome obeys the module docstring's rule, else what went wrong.

    ``reads()`` reads the damaged file the way predict does (read_spectra / load_model): an error it
    raises must name the file; an error raised after it (about the values, by the feature extractor or
    predict) needs not, since the run has a single input and a single model.
    """
    lines = [line for line in err.splitlines() if line.startswith("spectrafm ")]
    if not isinstance(rc, int):
        return f"main returned {rc!r}, not an int"
    if "Traceback" in err:
        return "a traceback on stderr"
    if rc == 0:
        if not harmless:
            return "exit 0 although the damage was not harmless"
        with open(out, newline="") as handle:
            rows = list(csv.DictReader(handle))
        answered = [r for r in rows if not r.get("flags")]  # flagged rows may carry NaN, by design
        if len(rows) != N_SPECTRA or not all(np.isfinite(float(r["FE_H"])) for r in answered):
            return f"exit 0 but the CSV holds {len(rows)} rows / unflagged non-finite values"
        return None
    if rc != 2:
        return f"exit {rc}: {lines[-1] if lines else err.strip()[-300:]}"
    if len(lines) != 1:
        return f"{len(lines)} error lines: {lines}"
    if out.exists():
        return "an output was written although the run failed"
    if str(named) not in lines[0]:
        try:
            reads()
        except Exception as read_error:  # noqa: BLE001
            return f"the reader's error does not name {named}: {type(read_error).__name__}: {read_error}"
    return None
