"""Ways to run refinement beyond one process; each is a thin adapter over ``api.refine_rows``."""
