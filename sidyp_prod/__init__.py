"""sidyp-prod: clean LLM-generated labels with SiDyP."""

__version__ = "0.1.0"
