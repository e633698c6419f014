"""Warmups and workloads for released peer kernels, for ``--ssd-warmup`` and ``--ssd-workload``.

Each recipe calls the peer's own code (imported at call time, never copied): see
``docs/recipes.md``. Nothing here is imported unless a recipe is named.
"""
