"""The cases the conformance suite runs: layer shapes, varlen batches, feature variants.

Two scales: ``small`` for the CPU interpreter (seconds per case), ``gpu`` for real launches.
Every batch has a sequence of length 1, lengths that are and are not multiples of the chunk
size, and chunk boundaries inside sequences.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import torch

from ..options import DTYPE_NAMES
from ..validation import MODEL_DTYPES

DTYPES = dict(zip(DTYPE_NAMES, MODEL_DTYPES))  # --ssd-dtype's names, in the same order

SCALES = {
    # nheads, head_dim, ssm_state_size, chunk_size
    "small": dict(nheads=4, head_dim=16, ssm_state_size=16, chunk_size=16),
    "gpu": dict(nheads=16, head_dim=64, ssm_state_size=128, chunk_size=64),
}


@dataclass(frozen=True)
class Case:
    name: str
    seqlens: dict  # scale -> list of sequence lengths
    layer: dict = field(default_factory=dict)  # make_mixer2_layer overrides
    initial_states: bool = False  # the batch carries initial states (the layer's z is layer={"gated": True})

    def layer_kwargs(self, scale: str, dtype: torch.dtype) -> dict:
        kwargs = dict(SCALES[scale], dtype=dtype, state_dtype=torch.float32)
        kwargs.update(self.layer)
        if kwargs["state_dtype"] == "model":
            kwargs["state_dtype"] = dtype
        return kwargs


def _lens(small: list, gpu: list) -> dict:
    return {"small": small, "gpu": gpu}


CORRECTNESS_CASES = (
    Case("single_token", _lens([1], [1])),
    Case("one_sequence_over_chunks", _lens([37], [300])),
    Case("varlen_mix", _lens([1, 16, 33, 5], [1, 64, 200, 513])),
    Case("initial_states", _lens([20, 1, 9], [129, 1, 64, 70]), initial_states=True),
    Case("z_gate", _lens([19, 4], [150, 33]), layer={"gated": True}),
    Case("D_per_channel", _lens([18, 7], [100, 65]), layer={"d_has_hdim": True}),
    Case("dt_limit", _lens([21, 3], [90, 31]), layer={"dt_limit": (0.01, 0.05)}),
    Case("no_softplus", _lens([17, 2], [70, 3]), layer={"dt_softplus": False, "dt_limit": (0.0, 0.1)}),
    # randn dt plus a small positive dt_bias: about half of the dt' are negative, which the
    # default limit clamps to 0 (a kernel that skips the clamp lets the state grow).
    Case("no_softplus_default_limit", _lens([19, 1, 6], [80, 1, 37]), initial_states=True,
         layer={"dt_softplus": False, "dt_limit": (0.0, float("inf"))}),
    Case("groups", _lens([23, 1], [140, 1]), layer={"n_groups": 2}),
    Case("tensor_parallel", _lens([18], [66]), layer={"n_groups": 2, "tp_size": 2}),
    Case("states_in_model_dtype", _lens([25, 2], [97, 2]), initial_states=True, layer={"state_dtype": "model"}),
    Case("everything", _lens([1, 35, 16], [1, 260, 64]), initial_states=True,
         layer={"gated": True, "d_has_hdim": True, "n_groups": 2, "dt_limit": (0.005, 0.08)}),
)

# Warmup coverage: a Mamba2-2.7B-like layer (the anchors' workload) and requests of every
# specialization class: total tokens == 1, % 16 == 0, neither; single-token sequences.
COVERAGE_LAYER = dict(nheads=80, head_dim=64, n_groups=1, ssm_state_size=128, chunk_size=256)
COVERAGE_REQUESTS = (
    [1],
    [17],
    [256],
    [1000, 2048, 517, 3000],
    [1, 1, 1],
    [5, 1, 300, 16],
    [255, 257],
)
