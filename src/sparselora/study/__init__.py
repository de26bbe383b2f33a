"""The SVD-vs-random study: does the SVD estimator choose better than chance, and by how much.

Phase A (``synthetic``): matrices with controlled spectra. Phase B (``weights``): real weights and
the real predictor on real activations. Phase C (``finetune``): LoRA prune → fine-tune on SST-2.
``report`` turns the CSVs of all three into a short paper.
"""
