"""hf_mltm: optimal-transport cross-modal retrieval for the Hugging Face ecosystem."""

__version__ = "0.1.0.dev0"
