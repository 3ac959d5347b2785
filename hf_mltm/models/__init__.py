"""Model families of hf_mltm, one folder each (configuration, feature extraction, processing, modeling)."""
