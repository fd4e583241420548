"""Figures (plotly), attention views (circuitsvis) and reports (jinja2 templates). Imports
``behaviours`` and everything below it."""
