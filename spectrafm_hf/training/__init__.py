"""Training the three SpectraFM stages with Accelerate, scratch baselines, evaluation, attention analysis
and the run report.

Modules (import what you need; nothing heavy happens at package import):

* :mod:`.loop` — the Accelerate training loop (resume, identical LR schedule on every process, JSONL +
  TensorBoard tracking, progress bars, best-checkpoint selection).
* :mod:`.stages` — stage 1/2/3 definitions and ``run_stage``.
* :mod:`.trainer` — the ``transformers.Trainer`` pieces and ``run_stage_with_trainer``.
* :mod:`.finetune` — ``spectrafm finetune`` (your own stars, your own window).
* :mod:`.baselines` — scratch MLP, ridge, The Cannon on the stage-3 data.
* :mod:`.evaluation` — RMSE / median bias / σ_MAD per [Fe/H] bin, calibration.
* :mod:`.attention` — decoder cross-attention over wavelength and line enrichment.
* :mod:`.report` — ``metrics.json``, Markdown report, figures.
"""
