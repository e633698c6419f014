"""The warmth verdict: after its warmup, does a kernel compile or autotune anything for the workload?

One concept, a module per part:

- :mod:`~pytest_ssd.verdict.fresh_process`: ``judge(WorkloadSpec(...)) -> Verdict``, the verdict as
  production meets it, from a fresh process with an empty Triton cache;
- :mod:`~pytest_ssd.verdict.child`: what runs in that process
  (``python -m pytest_ssd.verdict judge|cold SPEC``);
- :mod:`~pytest_ssd.verdict.reasons`: why each cold event was cold and the warmup call that fixes
  it (``compare``), the autotune candidates, the unused warm binaries;
- :mod:`~pytest_ssd.verdict.warm_set`: the plugin's in-process check, what this process's warmups
  compiled and each test phase's cold events explained against it;
- :mod:`~pytest_ssd.verdict.layer_names`: the names a layer config is filed under in the report.

Importing it imports Triton (the reasons read recorded events), so the plugin imports it only
once a test warms, is watched or asks for a verdict.
"""
from .fresh_process import Call, ColdBinary, Verdict, WorkloadSpec, analyse, gpu_target, judge
from .reasons import Candidates, CoverageReport, Miss, autotune_candidates, compare, unused

__all__ = ["Call", "Candidates", "ColdBinary", "CoverageReport", "Miss", "Verdict", "WorkloadSpec", "analyse",
           "autotune_candidates", "compare", "gpu_target", "judge", "unused"]
