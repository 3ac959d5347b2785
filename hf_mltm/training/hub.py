"""``--hub.push_to_hub``: check Hub access before training, publish the final folder after it.

The implementation lives in :mod:`hf_mltm.hub.publish`; this module keeps the trainer's names importable.
"""

from __future__ import annotations

from hf_mltm.hub.check import ExportCheckError
from hf_mltm.hub.publish import HubAccessError, check_hub_access, push_folder

__all__ = ["ExportCheckError", "HubAccessError", "check_hub_access", "push_folder"]
