"""Tooling that builds committed files with dev-only packages; nothing a stage or the CLI imports.

make plots-template    # tools/plots_template.py: reports/plots_template.html, vega inlined
"""
