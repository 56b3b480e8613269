"""Model cards, Hub publishing, remote code and offline Hub caches for SpectraFM checkpoints.

- ``cards``: per-stage model cards (``CardInfo``, ``render_card``, ``stage_metrics``).
- ``remote_code``: ``save_checkpoint`` (weights + config + preprocessor config + card + the three
  self-contained model files + the full ``auto_map``), used by every stage and by the converter.
- ``publish``: ``spectrafm publish`` (``run_publish``) with ``HfApi``.
- ``cache``: lay a checkpoint folder into a Hugging Face Hub cache for offline loading by repo id.

Submodules are imported on demand (``from spectrafm_hf.hub.remote_code import save_checkpoint``) so that
``import spectrafm_hf.hub`` stays cheap.
"""
