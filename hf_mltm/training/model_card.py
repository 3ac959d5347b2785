"""The README.md model card written next to the final model.

The implementation lives in :mod:`hf_mltm.hub.model_card` (built with `huggingface_hub.ModelCard`); this module
keeps the trainer's names importable.
"""

from __future__ import annotations

from hf_mltm.hub.model_card import build_model_card, metrics_table, write_model_card

__all__ = ["build_model_card", "metrics_table", "write_model_card"]
