"""Model cards, Hub publishing and offline Hub caches for SpectraFM checkpoints.

- ``cards``: per-stage model cards (``CardInfo``, ``render_card``, ``stage_metrics``).
- ``publish``: ``spectrafm publish`` (``run_publish``) with ``HfApi``: checkpoint folders (the card
  re-rendered for the repo id) and dataset folders (exported to the Hub dataset layout of
  :mod:`spectrafm_hf.data.hub_layout`).
- ``cache``: lay a checkpoint folder into a Hugging Face Hub cache for offline loading by repo id.

Checkpoint folders themselves (weights + config + preprocessor config + the three self-contained
model files + the full ``auto_map``) are written and read by :mod:`spectrafm_hf.checkpoints`, which
sits below this package: ``hub`` imports it, never the other way round. Render a card here
(``render_card``) and hand the result to ``save_checkpoint``.

Submodules are imported on demand (``from spectrafm_hf.hub.cards import render_card``) so that
``import spectrafm_hf.hub`` stays cheap.
"""
