"""Warmups for released peer kernels, for ``--ssd-warmup``.

Each recipe calls the peer's own code (imported at call time, never copied): see
``docs/recipes.md``. Nothing here is imported unless a recipe is named.
"""
