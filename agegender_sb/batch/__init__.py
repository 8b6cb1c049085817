"""The corpus job: inputs resolved once, the runner, rows, tables (lock, provenance, resume) and
torchrun ranks.
"""
