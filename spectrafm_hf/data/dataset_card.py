"""Dataset cards: the ``README.md`` of every dataset folder the package writes.

:func:`render_dataset_card` turns what a writer already knows — the grid + provenance payload stored with
the data (``schema.metadata_payload``), the ``datasets.Features`` and the rows and bytes of each split —
into a ``huggingface_hub.DatasetCard``:

* YAML the Hub and ``datasets`` read: ``license``, ``task_categories``, ``tags``, ``size_categories``,
  ``pretty_name``, ``annotations_creators``, ``configs`` (the data files of each split, so
  ``datasets.load_dataset(folder or repo)`` finds them) and ``dataset_info`` (features, rows and bytes
  per split), written with the same ``datasets`` helpers ``push_to_hub`` uses;
* Markdown: how to load the data and where the wavelength grid is, every column with its type, unit and
  meaning, the counts per split, how the data were made (simulator universe, prior, seed; or the
  APOGEE files and cuts) and the licence and attribution of the line data or the survey.

The prose frame is the Jinja2 template ``hub/templates/dataset.md`` (with the model-card templates: the
one place for card prose); the column table and provenance are built here from the data's own metadata,
so a card never describes a column the data do not have.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from .labels import ERROR_COLUMNS, LABEL_DESCRIPTIONS, LABEL_UNITS, LABELS

#: Layouts a card can describe: data files of split ``{split}`` relative to the dataset folder.
LAYOUTS = {"arrow": "{split}/data-*.arrow", "parquet": "data/{split}-*.parquet"}

#: Unit and meaning of the schema's fixed columns (labels and their errors are added from ``labels``).
BASE_COLUMNS: dict[str, tuple[str, str]] = {
    "id": ("—", "star identifier: the APOGEE_ID for APOGEE spectra, `sim-<universe>-<seed>-<index>` for "
                "simulated stars, `<file>-<row>` for tables without ids"),
    "flux": ("dimensionless (continuum = 1)", "continuum-normalised flux at the pixels of the wavelength grid; "
                                              "NaN at bad pixels"),
    "flux_err": ("dimensionless (as `flux`)", "1σ uncertainty of `flux`; NaN or inf = unknown (0 for noise-free "
                                              "synthetic spectra)"),
    "mask": ("—", "True = bad pixel, never read by the model; every pixel whose flux is not finite is masked"),
    "snr": ("—", "signal-to-noise ratio per pixel; NaN = unknown (and for noise-free synthetic spectra)"),
}

#: Extra columns written by the simulator (``data.simulated.EXTRA_COLUMNS``): unit and meaning.
SIMULATOR_COLUMNS: dict[str, tuple[str, str]] = {
    "VMICRO": ("km/s", "microturbulent velocity the spectrum was simulated with"),
    "VMACRO": ("km/s", "macroturbulent velocity the spectrum was simulated with"),
    "VSINI": ("km/s", "projected rotational velocity v sin i the spectrum was simulated with"),
    "C_FE": ("dex", "[C/Fe] the spectrum was simulated with (drives the CO and CN lines)"),
    "N_FE": ("dex", "[N/Fe] the spectrum was simulated with (drives the CN lines)"),
    **{f"TRUE_{label}": (LABEL_UNITS[label], f"true {LABEL_DESCRIPTIONS[label].split(',')[0]} the spectrum was "
                                             f"simulated with, before label noise (for evaluation only: never "
                                             f"a model input)") for label in LABELS},
}

#: What the label columns are, by data source (``metadata["source"]``, and the universe for simulations).
LABEL_ORIGIN = {
    ("simulator", "synthetic"): "as reported: exactly the label the spectrum was simulated with",
    ("simulator", "observed"): "as a survey would report it: the true label plus noise at the reported-error "
                               "level, about 0.7 % of abundances missing (NaN); the truth is in `TRUE_*`",
    ("apogee-dr17", None): "ASPCAP value from the allStar catalogue (or the file's own HDU); NaN = unknown",
}

SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"))


def size_category(n_rows: int) -> str:
    """The Hub's ``size_categories`` value for ``n_rows`` examples (e.g. 15000 → ``"10K<n<100K"``)."""
    for limit, name in SIZE_CATEGORIES:
        if n_rows < limit:
            return name
    return "n>10M" if n_rows >= 10_000_000 else SIZE_CATEGORIES[-1][1]


def feature_type(feature) -> str:
    """A ``datasets`` feature as a short type: ``string``, ``float32``, ``float32 × 7514``."""
    inner = getattr(feature, "feature", None)
    if inner is not None:
        length = getattr(feature, "length", -1)
        return f"{getattr(inner, 'dtype', inner)} × {length if length and length > 0 else 'P'}"
    return str(getattr(feature, "dtype", feature))


def column_docs(payload: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """Unit and meaning of every column this package can write, for a dataset with provenance ``payload``."""
    origin = LABEL_ORIGIN.get((payload.get("source"), payload.get("universe")),
                              LABEL_ORIGIN.get((payload.get("source"), None), "label as given; NaN = unknown"))
    docs = dict(BASE_COLUMNS)
    for label, error in zip(LABELS, ERROR_COLUMNS):
        docs[label] = (LABEL_UNITS[label], f"{LABEL_DESCRIPTIONS[label].split(',')[0]}, {origin}")
        docs[error] = (LABEL_UNITS[label], f"reported 1σ error of `{label}`; NaN = unknown")
    docs.update(SIMULATOR_COLUMNS)
    return docs


def columns_table(features, payload: Mapping[str, Any]) -> str:
    """Markdown table of every column of ``features``: name, type, unit, meaning (P = pixels)."""
    docs = column_docs(payload)
    lines = ["| column | type | unit | meaning |", "|---|---|---|---|"]
    for name, feature in features.items():
        unit, meaning = docs.get(name, ("not recorded", "extra scalar column of the source table (no "
                                                        "description recorded)"))
        lines.append(f"| `{name}` | {feature_type(feature)} | {unit} | {meaning} |")
    return "\n".join(lines)


def splits_table(sizes: Mapping[str, tuple[int, int]]) -> str:
    """Markdown table: spectra and bytes per split, and the total (empty splits say they hold no file)."""
    lines = ["| split | spectra | size on disk |", "|---|---:|---:|"]
    for split, (rows, n_bytes) in sizes.items():
        note = "" if rows else " (empty: not listed in `configs`)"
        lines.append(f"| `{split}`{note} | {rows} | {n_bytes / 1e6:.1f} MB |")
    total_rows = sum(rows for rows, _ in sizes.values())
    lines.append(f"| total | {total_rows} | {sum(b for _, b in sizes.values()) / 1e6:.1f} MB |")
    return "\n".join(lines)


def grid_summary(payload: Mapping[str, Any], wavelength_file: str) -> str:
    """The wavelength grid in words: pixels, range, and where it is stored."""
    grid = payload["wavelength_vac_A"]
    return (f"{len(grid)} pixels, {min(grid):.2f}–{max(grid):.2f} Å in vacuum; column `flux[i]` is the pixel "
            f"at `wavelength_vac_A[i]`. The grid and the provenance below are stored as JSON "
            f"(`{{\"spectrafm\": {{..., \"wavelength_vac_A\": [...]}}}}`) in `{wavelength_file}` beside this "
            "card, and in every data file (the `description` of each Arrow split; the key `spectrafm` of each "
            "Parquet file's schema metadata). `datasets.load_dataset` drops both, so read the grid from "
            "the files, as below.")


def _simulator_provenance(payload: Mapping[str, Any]) -> list[str]:
    gaps = payload.get("gap_config") or {}
    off = [name for name, value in gaps.items() if value is False]
    universe = payload.get("universe")
    lines = [
        f"- **Source**: the built-in APOGEE H-band simulator of `spectrafm-hf` (version "
        f"{payload.get('simulator_version', 'not recorded')}), `{universe}` universe "
        + ("(the clean model: spectra exactly consistent with their labels)" if universe == "synthetic" else
           "(one fixed \"true universe\" that differs from the model, plus instrument effects)"),
        f"- **Label prior**: `{payload.get('prior')}`; **seed** {payload.get('seed')}; **stars** {payload.get('n')}",
        f"- **Split fractions**: {json.dumps(payload.get('splits'))} (reproducible from the seed)",
        f"- **Resolving power**: R = {payload.get('resolving_power')}",
    ]
    if gaps:
        lines.append("- **Synthetic-to-observed gap terms**: " + ("all on" if not off else
                                                                   "off: " + ", ".join(f"`{n}`" for n in off)))
        if "snr_range" in gaps:
            lines.append(f"- **S/N range** (log-uniform): {gaps['snr_range'][0]:g}–{gaps['snr_range'][1]:g}")
    return lines


def _apogee_provenance(payload: Mapping[str, Any]) -> list[str]:
    cuts = payload.get("cut_summary")
    catalogue = f"`{payload['allstar']}`" if payload.get("allstar") else "none (labels from the files)"
    lines = [
        f"- **Source**: APOGEE DR17 `{payload.get('kind')}` files under `{payload.get('spectra_dir')}`",
        f"- **Catalogue**: {catalogue}",
        f"- **The paper's sample cuts**: {'applied' if payload.get('paper_cuts') else 'not applied'}"
        + (f" ({json.dumps(cuts)})" if cuts else ""),
        f"- **Split fractions**: {json.dumps(payload.get('splits'))}, seed {payload.get('seed')}",
        f"- **Flux kept**: {payload.get('flux_range')} (outside → NaN, masked); files that could not be used "
        "are listed with their reason in `bad_files.json` of the folder the dataset was built in",
    ]
    if payload.get("continuum"):
        lines.append(f"- **Continuum normalisation (apStar)**: {json.dumps(payload['continuum'])}")
    if payload.get("bad_pixmask_bits"):
        lines.append(f"- **APOGEE_PIXMASK bits treated as bad**: {payload['bad_pixmask_bits']}")
    return lines


def provenance_section(payload: Mapping[str, Any]) -> str:
    """How the data were made, from the stored provenance; the full record as JSON after the summary."""
    source = payload.get("source")
    if source == "simulator":
        lines = _simulator_provenance(payload)
    elif source == "apogee-dr17":
        lines = _apogee_provenance(payload)
    elif source == "table":
        lines = [f"- **Source**: the table `{payload.get('path')}` (read by `spectrafm_hf.data.tables`)"]
    else:
        lines = [f"- **Source**: {source or 'not recorded'}"]
    record = {k: v for k, v in payload.items() if k != "wavelength_vac_A"}
    lines += ["", "<details><summary>Full provenance record</summary>", "", "```json",
              json.dumps(record, indent=2, ensure_ascii=False), "```", "", "</details>"]
    return "\n".join(lines)


def line_data_attribution() -> str:
    """The sources and licences of the simulator's line list, quoted from the package's
    ``data/linelists/README.md`` (the one place they are written)."""
    text = (Path(__file__).resolve().parent / "linelists" / "README.md").read_text(encoding="utf-8")
    start = text.index("Sources and licences:")
    end = text.find("\n## ", start)
    quoted = text[start:end if end >= 0 else None].strip()
    # "below" points at the README's next section, which the card does not quote
    return re.sub(r"the\s+constants\s+below", "the simulator's calibration constants", quoted)


def attribution_section(payload: Mapping[str, Any]) -> tuple[str, dict]:
    """(Markdown, YAML licence fields) for the data's source."""
    source = payload.get("source")
    if source == "simulator":
        text = ("The spectra and labels were generated by `spectrafm-hf` (MIT licence) and are released "
                "under the MIT licence. The simulator's line data come from published work; cite them when "
                "you use these spectra.\n\n" + line_data_attribution())
        return text, {"license": "mit"}
    if source == "apogee-dr17":
        text = ("SDSS-IV APOGEE DR17 public data (Abdurro'uf et al. 2022, ApJS 259, 35; Majewski et al. 2017, "
                "AJ 154, 94; labels from ASPCAP, García Pérez et al. 2016, AJ 151, 144). Acknowledge and cite "
                "SDSS as its data policy asks: https://www.sdss4.org/collaboration/citing-sdss/. This "
                "repackaging adds no rights of its own.")
        return text, {"license": "other", "license_name": "sdss-public-data",
                      "license_link": "https://www.sdss4.org/collaboration/citing-sdss/"}
    return ("The licence of these spectra is that of their source, which this package does not know; check "
            "it before sharing.", {"license": "unknown"})


def _yaml_metadata(payload: Mapping[str, Any], features, sizes: Mapping[str, tuple[int, int]], layout: str,
                   licence: Mapping[str, str]):
    """The card's YAML: licence, task, tags, size, ``configs`` and ``dataset_info`` (``datasets`` helpers)."""
    from datasets import DatasetInfo, SplitDict, SplitInfo
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCardData

    tags = ["astronomy", "stellar-spectra", "spectroscopy", "apogee", "spectrafm"]
    if payload.get("source") == "simulator":
        tags += ["simulated", f"{payload.get('universe')}-universe"]
    total = sum(rows for rows, _ in sizes.values())
    data = DatasetCardData(**licence, pretty_name=dataset_title(payload), task_categories=["tabular-regression"],
                           tags=tags, size_categories=[size_category(total)],
                           annotations_creators=["machine-generated"])
    # Empty splits are left out of configs and dataset_info: datasets refuses to build a split that
    # the card lists but no data file holds ("corresponds to no data").
    filled = {split: size for split, size in sizes.items() if size[0] > 0}
    pattern = LAYOUTS[layout]
    MetadataConfigs({"default": {"data_files": [{"split": split, "path": pattern.format(split=split)}
                                                for split in filled]}}).to_dataset_card_data(data)
    splits = SplitDict()
    for split, (rows, n_bytes) in filled.items():
        splits.add(SplitInfo(name=split, num_bytes=int(n_bytes), num_examples=int(rows)))
    info = DatasetInfo(features=features, splits=splits, dataset_size=sum(int(b) for _, b in sizes.values()))
    DatasetInfosDict({"default": info}).to_dataset_card_data(data)
    return data


def dataset_title(payload: Mapping[str, Any]) -> str:
    """A one-line name for the dataset, from its provenance."""
    source = payload.get("source")
    if source == "simulator":
        return (f"SpectraFM simulated APOGEE spectra ({payload.get('universe')} universe, "
                f"{payload.get('prior')} prior, seed {payload.get('seed')})")
    if source == "apogee-dr17":
        return f"APOGEE DR17 {payload.get('kind')} spectra for SpectraFM"
    return "Stellar spectra in the SpectraFM schema"


def usage_section(layout: str, wavelength_file: str, repo_id: str | None, split: str,
                  location: str | None = None) -> str:
    """Load the data and its grid (split ``split`` as the example): with ``datasets`` and plain JSON.

    The code names ``repo_id`` when given, else the folder ``location`` (as the writer was given it).
    """
    folder = (f"folder = {json.dumps(str(location))}  # this dataset's folder\n" if location else
              'folder = str(Path(".").resolve())  # the folder holding this card\n')
    if repo_id:
        where = f'"{repo_id}"'
        grid = f'hf_hub_download("{repo_id}", "{wavelength_file}", repo_type="dataset")'
        imports, folder = "from huggingface_hub import hf_hub_download\n", ""
    else:
        where, grid = "folder", f'f"{{folder}}/{wavelength_file}"'
        imports = "" if location else "from pathlib import Path\n\n"
    if layout == "arrow" and not repo_id:
        loader = f"from datasets import load_from_disk\n\n{folder}dataset = load_from_disk({where})"
        predict = "`spectrafm predict --input <this folder>` reads spectra and grid together."
    else:
        loader = f"from datasets import load_dataset\n\n{folder}dataset = load_dataset({where})"
        predict = "`spectrafm_hf.data.schema.parquet_metadata(shard)` reads the grid of any one Parquet shard."
    return f"""```python
import json

import numpy as np
{imports}{loader}
grid_file = {grid}
wavelength = np.array(json.load(open(grid_file))["spectrafm"]["wavelength_vac_A"])  # (P,) vacuum Å
flux = dataset["{split}"].with_format("numpy")[:4]["flux"]                         # (4, P)
```

With `spectrafm-hf` installed, `spectrafm_hf.data.schema.get_wavelength(dataset["{split}"], source=grid_file)`
gives the same grid (it reads the split's `info.description` first, which `load_from_disk` keeps and
`load_dataset` drops), and {predict}"""


def render_dataset_card(payload: Mapping[str, Any], features, sizes: Mapping[str, tuple[int, int]], *,
                        layout: str, wavelength_file: str = "wavelength.json", repo_id: str | None = None,
                        location: str | None = None):
    """The dataset card of one dataset folder, as a ``huggingface_hub.DatasetCard``.

    Args:
        payload: the grid + provenance dict stored with the data (``wavelength_vac_A`` and the writer's
            metadata: ``source`` "simulator" / "apogee-dr17" / "table", seed, prior, files, cuts ...).
        features: the ``datasets.Features`` of every split.
        sizes: split → (rows, bytes), in split order.
        layout: ``"arrow"`` (``save_to_disk`` folder) or ``"parquet"`` (Hub dataset repo layout).
        wavelength_file: name of the grid file beside the card.
        repo_id: the Hub dataset id the card is rendered for (usage code), or None for a local folder.
        location: the local folder the usage code names when there is no ``repo_id``.
    """
    from huggingface_hub import DatasetCard

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {sorted(LAYOUTS)}, got {layout!r}")
    attribution, licence = attribution_section(payload)
    template = Path(str(resources.files("spectrafm_hf") / "hub" / "templates" / "dataset.md"))
    if not template.is_file():
        raise FileNotFoundError(f"dataset card template {template} is missing: the package was installed "
                                "without its data files (setup.cfg package_data must include hub/templates/*.md)")
    return DatasetCard.from_template(
        _yaml_metadata(payload, features, sizes, layout, licence),
        template_path=str(template),
        title=dataset_title(payload),
        simulated=payload.get("source") == "simulator",
        n_spectra=sum(rows for rows, _ in sizes.values()),
        usage=usage_section(layout, wavelength_file, repo_id, next(iter(sizes), "train"), location),
        grid=grid_summary(payload, wavelength_file),
        columns=columns_table(features, payload),
        splits=splits_table(sizes),
        provenance=provenance_section(payload),
        attribution=attribution,
    )
