"""Validation: output comparisons, emulated target runs and LFW accuracy (later issues)."""
