"""Comparisons: methods × tasks × seeds as ordinary run folders under one results folder."""

from sparselora.compare.plan import Cell, CompareConfig, load_compare_config, plan_cells
from sparselora.compare.runner import run_comparison

__all__ = ["Cell", "CompareConfig", "load_compare_config", "plan_cells", "run_comparison"]
