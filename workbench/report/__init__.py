"""python -m workbench.report <claim>: paper claims as experiment grids, verdicts computed from their runs."""
