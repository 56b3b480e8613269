"""``training/configs/paper.yaml`` end to end on a CPU: every stage for a few steps at paper width, measured.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/paper_smoke.py --out runs/paper_smoke \\
        --json docs/results/paper_smoke.json

What it runs: ``spectrafm pipeline`` itself (:func:`spectrafm_hf.pipeline.run_pipeline`) on a copy of the
paper config, written to ``<out>/paper_smoke.yaml``, in which only sizes change:

* kept: the model (d = 256, heads, MLPs, context 512), every stage's batch size, context, learning rate,
  schedule type, mixed precision (bf16), freezing, selection, rehearsal, ``from_stage1``, every baseline
  and its architecture, evaluation and both attention analyses;
* shrunk: the simulated star counts, ``max_steps`` (``--steps`` per transformer stage, ``--mlp-steps``
  for the MLP), evaluation / checkpoint intervals (every ``steps // 2``), warm-up (1 step where the paper
  has one), the warm-restart period (``steps // 2``, so a restart happens), the attention star counts,
  and ``data.cache_dir`` (``<out>/data`` unless ``--cache-dir``).

The typed configs of both files are compared field by field and the differences printed and recorded,
so nothing else can have changed unnoticed.

What it measures, per stage: seconds per training step (median of the steps after the first, split
into batch building on the host and forward + backward + AdamW), the aten operations of one step, the
parameter counts, and the peak RSS of every pipeline step (VmHWM, reset at each step's start; Linux).
From these and an analytic FLOP count it estimates the full paper run on one H100/H200 (see
:func:`gpu_estimate` for every assumption). Writes ``<out>/paper_smoke.json`` and, with ``--json``, a
copy (an existing file is replaced only with ``--overwrite``).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAPER_CONFIG = REPO / "training" / "configs" / "paper.yaml"
STAGE_SECTIONS = ("stage1", "stage2", "stage3")
#: Transformer stage folders in training order (stage3_from_stage1 only with ``from_stage1``).
TRANSFORMER_FOLDERS = ("stage1", "stage2", "stage3", "stage3_from_stage1", "scratch_transformer")

#: Peak dense bf16 tensor throughput of one H100 SXM / H200 (the same chip), FLOP/s (NVIDIA data sheet).
H100_PEAK_BF16 = 989e12
#: Sustained fractions of that peak assumed for the training matmuls (the brief's 30–40 %).
SUSTAINED_FRACTIONS = (0.30, 0.40)
#: Host cost of launching one CUDA kernel beyond the dispatch measured here on the CPU, s (assumed).
CUDA_LAUNCH_S = 4e-6


# ----------------------------------------------------------------------------------------------
# The smoke config: paper.yaml with sizes shrunk, nothing else
# ----------------------------------------------------------------------------------------------


def smoke_settings(raw: dict, args) -> dict:
    """``raw`` (the paper YAML as a mapping) with star counts, steps and intervals shrunk (module docstring)."""
    smoke = copy.deepcopy(raw)
    data = smoke["data"]
    data["synthetic"]["n"], data["observed"]["n"] = args.synthetic, args.observed
    data.setdefault("test", {})["n_iron_poor"] = args.iron_poor
    data.pop("cache_dir", None)
    if args.cache_dir:
        data["cache_dir"] = str(args.cache_dir)
    every = max(1, args.steps // 2)
    for section in STAGE_SECTIONS:
        stage = smoke[section]
        stage.update(max_steps=args.steps, eval_every=every, checkpoint_every=every)
        if stage.get("warmup_steps"):
            stage["warmup_steps"] = 1
        if stage.get("restart_period"):
            stage["restart_period"] = every
    baselines = smoke.get("baselines") or {}
    if baselines.get("scratch_transformer") is not None:
        baselines["scratch_transformer"]["max_steps"] = args.steps
    if baselines.get("mlp") is not None:
        baselines["mlp"].update(max_steps=args.mlp_steps, eval_every=max(1, args.mlp_steps // 2))
    attention = smoke.get("attention") or {}
    if attention:
        attention["n_stars"] = args.attention_stars
        if attention.get("first_half") is not None:
            attention["first_half"]["n_stars"] = args.first_half_stars
    return smoke


def config_differences(old, new, prefix: str = "") -> list[str]:
    """``key: old → new`` for every leaf that differs between two JSON-like trees (dataclasses as dicts)."""
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(old) | set(new), key=str):
            found += config_differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return found
    if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
        old, new = list(old), list(new)
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} → {new!r}"]


def typed_differences(paper_path: Path, smoke_path: Path) -> list[str]:
    """What the pipeline's own config loader sees differing between the paper YAML and the smoke YAML."""
    from spectrafm_hf.pipeline import load_config

    paper, smoke = asdict(load_config(paper_path)), asdict(load_config(smoke_path))
    paper.pop("path"), smoke.pop("path")
    return config_differences(paper, smoke)


# ----------------------------------------------------------------------------------------------
# Measurement: wrappers around the loop's batch and optimiser step and around the pipeline's timer
# ----------------------------------------------------------------------------------------------


def peak_rss_reset() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS; False where Linux does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak RSS of this process, MB: VmHWM (since the last reset) where available, else ``ru_maxrss``."""
    try:
        status = Path("/proc/self/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024
    except (OSError, AttributeError):
        import resource

        scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, kB on Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1024**2


def _op_counter_class():
    """A ``TorchDispatchMode`` counting aten operations (forward and backward), pausable."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class OpCounter(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.count, self.paused = 0, False

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.count += 0 if self.paused else 1
            return func(*args, **(kwargs or {}))

    return OpCounter


@dataclass
class StageRecord:
    """Per training step of one stage folder: host batch seconds, optimiser-step seconds; and sizes."""

    batch_s: list[float] = field(default_factory=list)
    step_s: list[float] = field(default_factory=list)
    params: int = 0
    trainable_params: int = 0
    model_ops_per_step: int | None = None
    pipeline_step: str | None = None


class Probe:
    """Installs timing wrappers on ``training.loop``'s ``_batch_on_device`` / ``_optimizer_step`` and
    ``pipeline.timing.Timer.step`` (restored on exit): the pipeline runs unchanged, only observed."""

    def __init__(self):
        self.stages: dict[str, StageRecord] = {}
        self.pipeline_steps: dict[str, dict] = {}
        self.current_step: str | None = None
        self.peak_reset_works = peak_rss_reset()
        self._pending_batch_s = 0.0

    @contextmanager
    def installed(self):
        from spectrafm_hf.pipeline import timing
        from spectrafm_hf.training import loop

        originals = (loop._batch_on_device, loop._optimizer_step, timing.Timer.step)
        loop._batch_on_device = self._wrap_batch(originals[0])
        loop._optimizer_step = self._wrap_step(originals[1])
        timing.Timer.step = self._wrap_timer(originals[2])
        try:
            yield self
        finally:
            loop._batch_on_device, loop._optimizer_step, timing.Timer.step = originals

    def _wrap_batch(self, original):
        def batch_on_device(make_batch, step, accelerator):
            start = time.perf_counter()
            batch = original(make_batch, step, accelerator)
            self._pending_batch_s = time.perf_counter() - start
            return batch

        return batch_on_device

    def _wrap_step(self, original):
        def optimizer_step(run, batch):
            record = self.stages.setdefault(run.out_dir.name, StageRecord(pipeline_step=self.current_step))
            if not record.step_s:
                record.params = sum(p.numel() for p in run.model.parameters())
                record.trainable_params = sum(p.numel() for p in run.trainable)
            start = time.perf_counter()
            loss = self._counted(original, run, batch, record) if len(record.step_s) == 1 else original(run, batch)
            record.step_s.append(time.perf_counter() - start)
            record.batch_s.append(self._pending_batch_s)
            return loss

        return optimizer_step

    @staticmethod
    def _counted(original, run, batch, record: StageRecord):
        """The step with its operations counted: forward, backward and gradient clipping; AdamW excluded
        (on CPU it runs tensor by tensor, on CUDA as a few multi-tensor kernels)."""
        counter = _op_counter_class()()
        optimizer_step = run.optimizer.step

        def uncounted_step(*args, **kwargs):
            counter.paused = True
            try:
                return optimizer_step(*args, **kwargs)
            finally:
                counter.paused = False

        own = vars(run.optimizer).get("step")  # an instance attribute of its own, if any, is put back
        run.optimizer.step = uncounted_step
        try:
            with counter:
                loss = original(run, batch)
        finally:
            if own is None:
                del run.optimizer.step
            else:
                run.optimizer.step = own
        record.model_ops_per_step = counter.count
        return loss

    def _wrap_timer(self, original):
        probe = self

        @contextmanager
        def step(timer, name):
            probe.current_step = name
            probe.peak_reset_works = peak_rss_reset() and probe.peak_reset_works
            start = time.perf_counter()
            try:
                with original(timer, name):
                    yield
            finally:
                probe.pipeline_steps[name] = {"seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb()}
                probe.current_step = None

        return step


def dispatch_seconds_per_op(repeats: int = 20000) -> float:
    """Host seconds of one eager aten operation on this CPU (a 1-element add: pure dispatch overhead)."""
    import torch

    a, b = torch.ones(1), torch.ones(1)
    for _ in range(1000):
        torch.add(a, b)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.add(a, b)
    return (time.perf_counter() - start) / repeats


# ----------------------------------------------------------------------------------------------
# Analytic FLOPs (matrix products only: 2 FLOPs per multiply-add)
# ----------------------------------------------------------------------------------------------


def forward_flops(model: dict, tokens: int, queries: int) -> dict[str, dict[str, float]]:
    """Forward FLOPs of one star through the SpectraFM model, by part: {part: {"linear", "core"}}.

    ``tokens``: encoder sequence length (context pixels + the ``add_bias_kv`` slot); ``queries``: label
    queries per star. "linear": products with weights (trained or not); "core": weight-free attention
    products (scores and weighted sums). Encoder block: q/k/v and output projections 8·L·d², MLP
    4·L·d·w, attention 4·L²·d. Decoder block (cross-attention that maps the queries into the encoder's
    space instead of projecting L keys, ``SpectraFMAttention._cross_attention``): query, probe, value and
    output maps 8·Q·d², MLP 4·Q·d·w, key-bias and bias-slot scores 4·Q·d, scores and sums 4·Q·H·L·d.
    Head: its MLP and two outputs. Equal to ``torch.utils.flop_counter`` (eager attention) to ~1e-6.
    """
    d = int(model["d_model"])
    parts: dict[str, dict[str, float]] = {}
    for index, width in enumerate(model["encoder_mlp"]):
        parts[f"encoder.{index}"] = {"linear": 8 * tokens * d * d + 4 * tokens * d * width,
                                     "core": 4 * tokens * tokens * d}
    for index, (heads, width) in enumerate(zip(model["decoder_heads"], model["decoder_mlp"])):
        parts[f"decoder.{index}"] = {"linear": 8 * queries * d * d + 4 * queries * d * width + 4 * queries * d,
                                     "core": 4 * queries * heads * tokens * d}
    widths = [d, *model["head_mlp"]]
    head = sum(2 * a * b for a, b in zip(widths[:-1], widths[1:])) + 2 * 2 * widths[-1]
    parts["head"] = {"linear": queries * head, "core": 0.0}
    return parts


def training_flops_per_star(parts: dict[str, dict[str, float]], frozen: set[str]) -> float:
    """Forward + backward FLOPs of one star. Backward: 2× the forward for trained weight products
    (input and weight gradients), 1× for frozen ones (input gradients only: the trainable embedding
    sits below every block, so gradients flow through all of them), 2× for attention cores."""
    total = 0.0
    for name, flops in parts.items():
        is_frozen = name in frozen or any(name.startswith(p) for p in frozen if p.endswith("."))
        total += flops["linear"] * (2 if is_frozen else 3) + flops["core"] * 3
    return total


def stage_tokens_and_queries(spec, window_pixels: int) -> tuple[int, int]:
    """Encoder tokens (context + bias slot) and queries per star of a stage's training batches."""
    from spectrafm_hf.data.labels import LABELS

    queries = 1 if spec.request == "random" else len(LABELS) if spec.request == "all" else len(spec.request)
    return min(spec.context_length, window_pixels) + 1, queries


def frozen_parts(spec, model: dict) -> set[str]:
    """Names of :func:`forward_flops` parts a stage freezes ("decoder." = every decoder block)."""
    frozen = {f"encoder.{i % len(model['encoder_mlp'])}" for i in spec.freeze_encoder_blocks}
    if spec.freeze_decoder:
        frozen |= {"decoder.", "head"}
    return frozen


def window_pixels(spec) -> int:
    window = spec.pixels
    return window.stop - window.start


# ----------------------------------------------------------------------------------------------
# The paper run's work, stage by stage, from the typed config
# ----------------------------------------------------------------------------------------------


def transformer_stages(config) -> dict:
    """Stage folder → its StageSpec, in training order, as the pipeline would train them."""
    stages = {"stage1": config.stage1, "stage2": config.stage2, "stage3": config.stage3.spec}
    if config.stage3.from_stage1:
        stages["stage3_from_stage1"] = config.stage3.spec
    if config.baselines.scratch_transformer is not None:
        stages["scratch_transformer"] = config.baselines.scratch_transformer
    return stages


def stage_work(config) -> dict[str, dict]:
    """Per transformer stage: training FLOPs per step and in total, and the forward FLOPs of its
    in-training evaluations (stage 1/2: 256 validation stars; stage 3 and the scratch transformer: the
    iron-rich validation stars, at most ``n_validation``, all window pixels)."""
    from spectrafm_hf.pipeline.config import SYNTHETIC_SPLITS
    from spectrafm_hf.pipeline.train import N_STAGE_VALIDATION

    counts = star_counts(config)
    synthetic_validation = round((config.data.synthetic.n or 0) * SYNTHETIC_SPLITS["validation"])
    validation = {"stage1": min(N_STAGE_VALIDATION, synthetic_validation),
                  "stage2": min(N_STAGE_VALIDATION, counts["validation"])}
    work = {}
    for folder, spec in transformer_stages(config).items():
        tokens, queries = stage_tokens_and_queries(spec, window_pixels(spec))
        parts = forward_flops(config.model, tokens, queries)
        per_star = training_flops_per_star(parts, frozen_parts(spec, config.model))
        stars = spec.batch_size + spec.rehearsal
        n_eval = validation.get(folder, counts["stage3_validation"])
        evaluations = math.ceil(spec.loop.max_steps / spec.loop.eval_every)
        forward = sum(p["linear"] + p["core"] for p in parts.values())
        work[folder] = {"steps": spec.loop.max_steps, "stars_per_step": stars, "tokens": tokens, "queries": queries,
                        "train_flop_per_step": per_star * stars,
                        "train_flop": per_star * stars * spec.loop.max_steps,
                        "eval_flop": evaluations * n_eval * forward}
    return work


def star_counts(config) -> dict[str, int]:
    """Test, validation and stage-3 validation star counts the config implies (split fractions applied)."""
    observed = config.data.observed
    n = observed.n or 0
    test = round(n * observed.splits["test"]) + config.data.test.n_iron_poor
    validation = round(n * observed.splits["validation"])
    return {"test": test, "validation": validation,
            "stage3_validation": min(config.stage3.n_validation, validation)}


def evaluation_flops(config) -> dict[str, float]:
    """Forward FLOPs of the pipeline's evaluation and attention steps (run on the CPU: ``load_model(...,
    device="cpu")`` in ``pipeline/evaluate.py`` and ``training/attention.py``)."""
    from spectrafm_hf.data.grid import FE_WINDOW, FIRST_HALF
    from spectrafm_hf.data.labels import LABELS
    from spectrafm_hf.pipeline.evaluate import N_STAGE2_VALIDATION

    counts, model = star_counts(config), config.model
    fe_pixels, half = FE_WINDOW.stop - FE_WINDOW.start, FIRST_HALF.stop - FIRST_HALF.start

    def forward(pixels, queries):
        return sum(p["linear"] + p["core"] for p in forward_flops(model, pixels + 1, queries).values())

    fe_models = 2 + len([f for f in transformer_stages(config) if f not in ("stage1", "stage2")])
    fe_window = fe_models * (counts["test"] + counts["stage3_validation"]) * forward(fe_pixels, 1)
    chunk = int(config.stage2_eval_context) if str(config.stage2_eval_context) != "all" else half
    chunks = [chunk] * (half // chunk) + ([half % chunk] if half % chunk else [])
    stage2_stars = counts["test"] + min(N_STAGE2_VALIDATION, counts["validation"])
    stage2 = stage2_stars * sum(forward(c, len(LABELS)) for c in chunks)
    attention = 0.0
    if config.attention.enabled:
        options = config.attention
        attention = min(options.n_stars, counts["test"]) * forward(fe_pixels, len(options.queries))
        if options.first_half is not None:
            first = options.first_half
            attention += min(first.n_stars, counts["test"]) * forward(half, len(first.queries))
    return {"evaluation": fe_window + stage2, "attention analysis": attention}


# ----------------------------------------------------------------------------------------------
# The estimate
# ----------------------------------------------------------------------------------------------


def measured_stage_figures(probe: Probe, smoke_work: dict) -> dict[str, dict]:
    """Per stage folder: median step / batch seconds (steps after the first), first step, peak RSS of
    its pipeline step, parameters, operations per step and the achieved FLOP rate."""
    figures = {}
    for folder, record in probe.stages.items():
        later = record.step_s[1:] or record.step_s
        later_batch = record.batch_s[1:] or record.batch_s
        step_s, batch_s = statistics.median(later), statistics.median(later_batch)
        flop = smoke_work.get(folder, {}).get("train_flop_per_step", float("nan"))
        pipeline_step = probe.pipeline_steps.get(record.pipeline_step, {})
        figures[folder] = {
            "steps": len(record.step_s), "first_step_s": record.step_s[0], "median_step_s": step_s,
            "median_batch_s": batch_s, "step_s_all": record.step_s, "batch_s_all": record.batch_s,
            "peak_rss_mb": pipeline_step.get("peak_rss_mb"), "pipeline_step": record.pipeline_step,
            "params": record.params, "trainable_params": record.trainable_params,
            "model_ops_per_step": record.model_ops_per_step,
            "train_gflop_per_step": flop / 1e9, "achieved_gflop_per_s": flop / step_s / 1e9,
        }
    return figures


def gpu_estimate(paper, smoke, measured: dict, pipeline_steps: dict, per_op_s: float) -> dict:
    """The full paper run on one H100/H200 (bf16), from the analytic FLOPs and what was measured here.

    Training step = max(GPU compute, host work): compute = training FLOPs / (peak × fraction); host
    work = the batch building measured here (numpy tokenisation, the same code on a GPU machine's
    host) + the step's aten operations × (dispatch measured here + ``CUDA_LAUNCH_S``). The host can
    prepare step k+1 while the GPU runs step k (the loop synchronises only every ``log_every`` steps),
    hence max.
    Evaluation and attention run on the CPU in the pipeline (device="cpu"): their FLOPs at the FLOP
    rate the smoke's evaluation reached here. Data simulation, the scratch MLP (a CPU loop), ridge and
    The Cannon: host work, scaled from the smoke by star count / steps. All host work at this
    machine's speed and thread count.
    """
    paper_work = stage_work(paper)
    scenarios = {}
    for fraction in SUSTAINED_FRACTIONS:
        rate = H100_PEAK_BF16 * fraction
        stages = {}
        for folder, work in paper_work.items():
            figures = measured.get(folder)
            host_s = (figures["median_batch_s"] + (figures["model_ops_per_step"] or 0) * (per_op_s + CUDA_LAUNCH_S)
                      if figures else float("nan"))
            compute_s = work["train_flop_per_step"] / rate
            step_s = max(compute_s, host_s)
            stages[folder] = {"compute_s_per_step": compute_s, "host_s_per_step": host_s, "step_s": step_s,
                              "bound": "GPU compute" if compute_s >= host_s else "host",
                              "hours": (work["steps"] * step_s + work["eval_flop"] / rate) / 3600}
        scenarios[f"{int(fraction * 100)}% of peak"] = {"sustained_tflop_per_s": rate / 1e12, "stages": stages}
    host = host_steps_estimate(paper, smoke, pipeline_steps)
    for scenario in scenarios.values():
        scenario["total_hours"] = sum(s["hours"] for s in scenario["stages"].values()) + sum(
            h["hours"] for h in host.values())
        scenario["compute_only_hours"] = sum(w["train_flop"] for w in paper_work.values()) / (
            scenario["sustained_tflop_per_s"] * 1e12) / 3600
    return {"assumptions": estimate_assumptions(per_op_s), "paper_work": paper_work,
            "training": scenarios, "host_steps": host}


def host_steps_estimate(paper, smoke, pipeline_steps: dict) -> dict[str, dict]:
    """Hours of the pipeline's host-side steps for the paper config, scaled from the smoke's seconds."""
    def seconds(prefix):
        return sum(v["seconds"] for k, v in pipeline_steps.items() if k.startswith(prefix))

    paper_eval, smoke_eval = evaluation_flops(paper), evaluation_flops(smoke)
    host = {}
    for name in ("evaluation", "attention analysis"):
        rate = smoke_eval[name] / max(seconds(name), 1e-9)
        host[name] = {"flop": paper_eval[name], "cpu_gflop_per_s_measured": rate / 1e9,
                      "hours": paper_eval[name] / rate / 3600}
    paper_stars, smoke_stars = ((c.data.synthetic.n or 0) + (c.data.observed.n or 0) + c.data.test.n_iron_poor
                                for c in (paper, smoke))
    per_spectrum = seconds("data") / max(smoke_stars, 1)
    host["data (simulate)"] = {"spectra": paper_stars, "seconds_per_spectrum_measured": per_spectrum,
                               "hours": per_spectrum * paper_stars / 3600}
    if paper.baselines.mlp is not None and smoke.baselines.mlp is not None:
        per_step = seconds("baseline: scratch MLP") / smoke.baselines.mlp.max_steps
        host["baseline: scratch MLP"] = {"steps": paper.baselines.mlp.max_steps, "seconds_per_step_measured": per_step,
                                         "hours": per_step * paper.baselines.mlp.max_steps / 3600}
    for name in ("baseline: ridge", "baseline: The Cannon"):
        host[name] = {"hours": seconds(name) / 3600, "note": "as measured: the same 100 stage-3 stars"}
    host["report"] = {"hours": seconds("report") / 3600, "note": "as measured, not scaled to 6600 test stars"}
    return host


def estimate_assumptions(per_op_s: float) -> dict:
    return {
        "gpu": "one H100 SXM or H200 (same tensor cores), bf16 autocast as in paper.yaml, one process",
        "peak_bf16_dense_tflop_per_s": H100_PEAK_BF16 / 1e12,
        "sustained_fractions": list(SUSTAINED_FRACTIONS),
        "flops": "matrix products only, 2 per multiply-add; backward 2x forward (1x for frozen weights' "
                 "products); flash-attention recomputation and element-wise work not counted",
        "host_dispatch_s_per_op_measured": per_op_s,
        "cuda_launch_s_per_op_assumed": CUDA_LAUNCH_S,
        "host_work": "measured here at this run's thread count; a GPU machine's host is likely faster",
        "step": "max(GPU compute, host batch + dispatch): the loop has no per-step synchronisation",
        "cpu_to_gpu_ratio": "not used: the CPU step is compute-bound in fp32/bf16 on 1 thread while the GPU step "
                            "is host-bound, so one ratio would not transfer; host work is measured directly instead",
    }


# ----------------------------------------------------------------------------------------------
# Machine, table, command line
# ----------------------------------------------------------------------------------------------


def machine() -> dict:
    import torch

    cpu = platform.processor()
    try:
        found = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        cpu = found.group(1).strip() if found else cpu
    except OSError:
        pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "load_average_1min_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


def print_summary(result: dict) -> None:
    print("\npaper.yaml smoke run on CPU "
          f"({result['machine']['cpu']}, {result['machine']['torch_threads']} torch thread(s), torch "
          f"{result['machine']['torch']})")
    print(f"{'stage':22s} {'steps':>5s} {'s/step':>8s} {'batch s':>8s} {'1st s':>7s} {'GFLOP/s':>8s} "
          f"{'params':>10s} {'trainable':>10s} {'ops':>6s} {'peak RSS MB':>11s}")
    for folder, f in result["stages"].items():
        print(f"{folder:22s} {f['steps']:5d} {f['median_step_s']:8.2f} {f['median_batch_s']:8.3f} "
              f"{f['first_step_s']:7.2f} {f['achieved_gflop_per_s']:8.1f} {f['params']:10,d} "
              f"{f['trainable_params']:10,d} {f['model_ops_per_step'] or 0:6d} {f['peak_rss_mb'] or 0:11.0f}")
    print("\npipeline steps (wall s, peak RSS MB): " + "; ".join(
        f"{k} {v['seconds']:.1f} / {v['peak_rss_mb']:.0f}" for k, v in result["pipeline_steps"].items()))
    estimate = result["gpu_estimate"]
    print("\nfull paper.yaml run on one H100/H200, bf16 (assumptions in the JSON):")
    for name, scenario in estimate["training"].items():
        print(f"  {name} ({scenario['sustained_tflop_per_s']:.0f} TFLOP/s): total {scenario['total_hours']:.1f} h "
              f"(training FLOPs alone {scenario['compute_only_hours'] * 60:.1f} min)")
        for folder, s in scenario["stages"].items():
            print(f"    {folder:22s} {s['hours']:6.2f} h  step {s['step_s'] * 1e3:7.2f} ms (GPU "
                  f"{s['compute_s_per_step'] * 1e3:.2f} ms, host {s['host_s_per_step'] * 1e3:.2f} ms; {s['bound']})")
    threads = result["machine"]["torch_threads"]
    for name, h in estimate["host_steps"].items():
        print(f"  host ({threads} thread(s), as measured here): {name:22s} {h['hours']:6.2f} h")
    print(f"  on this CPU instead: {result['cpu_full_run_days']:.1f} days of transformer training at this thread count")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="run folder (new or empty)")
    parser.add_argument("--config", type=Path, default=PAPER_CONFIG, help="paper config (default paper.yaml)")
    parser.add_argument("--steps", type=int, default=4, help="training steps per transformer stage")
    parser.add_argument("--mlp-steps", type=int, default=20, help="scratch MLP steps")
    parser.add_argument("--synthetic", type=int, default=256, help="synthetic stars (stage 1)")
    parser.add_argument("--observed", type=int, default=600, help="observed stars (stages 2-3, test)")
    parser.add_argument("--iron-poor", type=int, default=60, help="iron-poor test supplement")
    parser.add_argument("--attention-stars", type=int, default=16)
    parser.add_argument("--first-half-stars", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="simulated data cache (default <out>/data)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be ≥ 2 (the first step is warm-up, not timed)")
    return args


def run_smoke(args) -> dict:
    """Write the smoke config, run the pipeline under the probe, return the figures (also in the JSON)."""
    import torch
    import yaml

    from spectrafm_hf.output_guard import open_work_folder
    from spectrafm_hf.pipeline import load_config, run_pipeline

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--out {out} is not empty; the smoke measures fresh training: choose a new folder")
    open_work_folder(out, kind="run")
    smoke_path = out / "paper_smoke.yaml"
    smoke_path.write_text(yaml.safe_dump(smoke_settings(yaml.safe_load(args.config.read_text()), args),
                                         sort_keys=False))
    paper, smoke = load_config(args.config), load_config(smoke_path)
    differences = typed_differences(args.config, smoke_path)
    info = machine()
    start = time.perf_counter()
    with Probe().installed() as probe:
        run_pipeline(argparse.Namespace(config=str(smoke_path), out=str(out), seed=None, stage3_trainer=None))
    measured = measured_stage_figures(probe, stage_work(smoke))
    per_op_s = dispatch_seconds_per_op()
    paper_work = stage_work(paper)
    cpu_days = sum(paper_work[f]["steps"] * measured[f]["median_step_s"] for f in measured if f in paper_work) / 86400
    info["load_average_1min_at_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {
        "machine": info, "config": _shown(args.config), "config_changes": differences,
        "kept_settings": kept_settings(smoke),
        "wall_seconds": time.perf_counter() - start, "peak_rss_reset_per_step": probe.peak_reset_works,
        "stages": measured, "pipeline_steps": probe.pipeline_steps, "cpu_full_run_days": cpu_days,
        "gpu_estimate": gpu_estimate(paper, smoke, measured, probe.pipeline_steps, per_op_s),
    }


def kept_settings(config) -> dict:
    """The paper settings the smoke ran with (model and every transformer stage's recipe), for the record."""
    stages = {folder: {"batch_size": spec.batch_size, "context_length": spec.context_length, "window": spec.window,
                       "request": spec.request, "learning_rate": spec.loop.learning_rate,
                       "schedule": spec.loop.schedule, "mixed_precision": spec.loop.mixed_precision,
                       "freeze_decoder": spec.freeze_decoder, "freeze_encoder_blocks": list(spec.freeze_encoder_blocks),
                       "rehearsal": spec.rehearsal, "select_on": spec.select_on}
              for folder, spec in transformer_stages(config).items()}
    mlp = config.baselines.mlp
    return {"model": dict(config.model), "stages": stages, "from_stage1": config.stage3.from_stage1,
            "mlp_hidden": list(mlp.hidden) if mlp is not None else None,
            "baselines": [name for name in ("mlp", "ridge", "cannon") if getattr(config.baselines, name) is not None]}


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it is inside it (the JSON is committed)."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(REPO)) if resolved.is_relative_to(REPO) else str(path)


def write_json(path: Path, result: dict, overwrite: bool) -> None:
    from spectrafm_hf.output_guard import check_output_file

    check_output_file(path, overwrite=overwrite, option="--json")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))  # before torch is imported
    if args.json is not None:  # checked before minutes of work
        from spectrafm_hf.output_guard import check_output_file

        check_output_file(args.json, overwrite=args.overwrite, option="--json")
    result = {"command": " ".join(["scripts/paper_smoke.py", *(sys.argv[1:] if argv is None else argv)]),
              **run_smoke(args)}
    write_json(Path(args.out) / "paper_smoke.json", result, overwrite=False)
    if args.json is not None:
        write_json(args.json, result, overwrite=args.overwrite)
    print_summary(result)
    return result


if __name__ == "__main__":
    main()
