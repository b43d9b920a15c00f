"""Typer command-line interface (installed as ``sidyp_prod.cli``)."""
