"""`evaluate` metric modules of hf_mltm (load them by path with ``evaluate.load``)."""
