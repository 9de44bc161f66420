"""Plots and reports: figures drawn from computed results, never derivatives."""
