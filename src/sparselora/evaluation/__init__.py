"""Evaluation: one loop for every task kind (loop), task metrics, and re-evaluating a saved run (rerun)."""
