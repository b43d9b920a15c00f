"""Ways to run refinement beyond one process; each is a thin adapter over
``pipeline.refine_rows``."""
