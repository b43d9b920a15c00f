"""Templates of the python-backend ``model.py`` files that ``export --triton-repo`` writes.

They run inside a Triton server's python backend (``triton_python_backend_utils`` exists only
there), so nothing in the package imports them; they are copied as text.
"""
