"""The parts of pytest_ssd.triton_compat that exist because Triton versions differ."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import triton
from triton.runtime.driver import driver

import kernels_for_tests as kt
from pytest_ssd import triton_compat
from pytest_ssd.compile_only import compile_only
from pytest_ssd.events import Recording, record_triton

CONFIGS = [triton.Config({"BLOCK": 32}), triton.Config({"BLOCK": 64})]


_INTERPRET = f"""
import json, sys, torch, triton
sys.path.insert(0, {os.path.dirname(kt.__file__)!r})
import kernels_for_tests as kt
from pytest_ssd import triton_compat
from pytest_ssd.events import Recording, record_triton
configs = [triton.Config({{"BLOCK": 32}}), triton.Config({{"BLOCK": 64}})]
pair = triton_compat.kernel_pair(kt.scale, autotune_configs=configs, autotune_key=["n"])
torch.manual_seed(0)
x, out = torch.randn(100), torch.randn(100)
expected = out.clone()
expected[:70] = 2 * x[:70]
with record_triton() as rec:
    pair.interpreted[(4,)](x, out, 70, 1, DOUBLE=True)
print(json.dumps({{"equal": torch.equal(out, expected), "recording": rec.to_dict()}}))
"""


@pytest.mark.skipif(not triton_compat.version_at_least(3, 3),
                    reason="Triton 3.2's interpreter rejects the launch options of an autotune Config")
def test_autotuned_kernel_pair_builds_and_interprets_without_a_gpu():
    # A process of its own: up to Triton 3.5 the interpreter patches triton.language for good,
    # and compiling any kernel afterwards in that process fails.
    done = subprocess.run([sys.executable, "-c", _INTERPRET], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["equal"]
    (tune,) = Recording.from_dict(result["recording"]).events  # nothing compiles; every config is benchmarked
    assert (tune.kind, tune.configs_benchmarked, tune.key_values) == ("autotune", 2, {"n": 70})
    assert tune.winner is not None and tune.winner["kwargs"]["BLOCK"] == 32, "the first config wins, always"


_AUTOTUNE_ON_CPU = """
import json, os, sys, torch, triton
import triton.language as tl
from triton.runtime.autotuner import Autotuner
from pytest_ssd import triton_compat
from pytest_ssd.events import record_triton

assert os.environ["TRITON_INTERPRET"] == "1"
original = vars(Autotuner).get("do_bench")
CONFIGS = [triton.Config({"BLOCK": 32}), triton.Config({"BLOCK": 64}), triton.Config({"BLOCK": 16})]


def increment(p, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(p + offs, tl.sum(tl.load(p + offs, mask=mask)[:, None], axis=1) + 1, mask=mask)


def define():  # as a third-party module does, with triton.autotune over triton.jit
    return triton.autotune(configs=CONFIGS, key=["n"])(triton.jit(increment))


# Triton 3.4+ looks the benchmarker up when tuning: a kernel defined before the block works too;
# 3.2/3.3 look it up when the kernel is defined, which fails without a driver.
before = define() if triton_compat.version_at_least(3, 4) else None
results = {}
with triton_compat.interpreter_autotuning(run_each_config=sys.argv[1] == "each"):
    for name, kernel in (("before", before), ("inside", define())):
        if kernel is None:
            continue
        p = torch.zeros(100)
        with record_triton() as rec:
            kernel[lambda meta: (triton.cdiv(70, meta["BLOCK"]),)](p, 70)
        (tune,) = rec.autotunes
        results[name] = {"increments": sorted(set(p[:70].tolist())), "untouched": bool((p[70:] == 0).all()),
                         "best": kernel.best_config.kwargs["BLOCK"], "benchmarked": tune.configs_benchmarked,
                         "winner": tune.winner["kwargs"]["BLOCK"]}
results["restored"] = vars(Autotuner).get("do_bench") is original
print(json.dumps(results))
"""


@pytest.mark.parametrize("choice", ["first", "each"])
def test_autotuned_kernels_tune_under_the_interpreter_without_a_driver(choice):
    # A process of its own with TRITON_INTERPRET=1, as a session interpreting a third-party kernel runs.
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run([sys.executable, "-c", _AUTOTUNE_ON_CPU, choice], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.splitlines()[-1])
    assert results.pop("restored"), "Autotuner.do_bench is Triton's again after the block"
    assert set(results) == ({"before", "inside"} if triton_compat.version_at_least(3, 4) else {"inside"})
    # "first": nothing runs while tuning, the launch runs the first config once; "each": every
    # config is launched once while tuning (no restore_value here), then the first config again.
    increments = 1 if choice == "first" else 1 + 3
    for name, got in results.items():
        assert got == {"increments": [increments], "untouched": True, "best": 32, "benchmarked": 3, "winner": 32}, name


def test_autotuned_kernel_pair_compiles_every_config_in_compile_only(triton_cache_dir):
    pair = triton_compat.kernel_pair(kt.scale, autotune_configs=CONFIGS, autotune_key=["n"])
    torch.manual_seed(0)
    with compile_only("cuda:90"), record_triton() as rec:
        pair.compiled[(4,)](torch.randn(100), torch.randn(100), 70, 1, DOUBLE=True)
    assert [e.kind for e in rec.events] == ["compile", "compile", "autotune"]
    assert [e.constexprs["BLOCK"] for e in rec.compiles] == [32, 64]


def test_persisting_autotune_results_needs_triton_3_4():
    if triton_compat.version_at_least(3, 4):
        assert triton_compat.autotune(kt.make_scale(), CONFIGS, ["n"], cache_results=True).cache_results
    else:
        with pytest.raises(ValueError, match="cache_results=True needs Triton >= 3.4; installed: 3."):
            triton_compat.autotune(kt.make_scale(), CONFIGS, ["n"], cache_results=True)


def test_swapping_the_driver_restores_the_very_object():
    def slot():
        return vars(driver).get("_active", vars(driver).get("active"))

    before, fake = slot(), object()
    restore = triton_compat.swap_active_driver(fake)
    try:
        assert slot() is fake
    finally:
        restore()
    assert slot() is before


def test_named_tuning_key_is_tritons_key():
    tuner = kt.make_tuned_heads()
    torch.manual_seed(0)
    x, states, out = torch.randn(8), torch.randn(8).to(torch.bfloat16), torch.randn(8)
    tuner.nargs = dict(zip(tuner.arg_names, (x, states, out, 40)))
    key, values, dtypes = triton_compat.named_tuning_key(tuner, {"seqlen": 7})
    assert key == (40, "torch.float32", "torch.bfloat16", "torch.float32")
    assert values == {"nheads": 40}
    assert dtypes == {"x_ptr": "torch.float32", "states_ptr": "torch.bfloat16", "out_ptr": "torch.float32"}


def test_a_kernel_pair_interprets_its_jit_helpers_and_compiles_them_as_they_are(triton_cache_dir):
    """The interpreted kernel calls its @jit helpers (and theirs) as device functions; the compiled
    one keeps the JITFunctions, which Triton inlines (compile-only here)."""
    from triton.runtime.jit import JITFunction

    pair = triton_compat.kernel_pair(kt.scale_with_helpers)
    torch.manual_seed(0)
    x = torch.randn(100)
    assert pair.compiled.fn is kt.scale_with_helpers
    assert isinstance(pair.compiled.fn.__globals__["_doubled"], JITFunction)
    # compiled first: up to Triton 3.5 the interpreter patches triton.language for good
    with compile_only("cuda:90"):
        pair.compiled[(2,)](x, torch.empty(100), 100, BLOCK=64, NEGATE=True)
    assert triton_compat.cached_binaries(pair.compiled), "the compiled kernel did not compile"
    for negate in (False, True):
        out = torch.full((100,), float("nan"))
        pair.interpreted[(2,)](x, out, 100, BLOCK=64, NEGATE=negate)
        torch.testing.assert_close(out, -2 * x if negate else 2 * x, rtol=0, atol=0)


def test_compiling_after_an_interpreted_call_of_the_bundled_kernel(mixer2_layer, ssd_inputs, ssd_seed,
                                                                   triton_cache_dir):
    """Triton 3.2-3.5's interpreter leaves triton.language patched, and compiling in that process
    then fails; our interpreted kernels undo the patches after each launch
    (triton_compat.language_restored), so CPU numerics and compile-only checks share a process."""
    import triton.language as tl

    from pytest_ssd.kernels import mamba_chunk_scan_combined_varlen

    print(f"seed={ssd_seed}")
    before = {name: getattr(tl, name) for name in ("load", "dot", "range", "static_range")}
    layer = mixer2_layer(nheads=4, head_dim=16, ssm_state_size=16, chunk_size=16, dtype=torch.float32,
                         state_dtype=torch.float32, device="cpu")
    inputs = ssd_inputs(layer, [20, 3], device="cpu")
    out = torch.full_like(inputs.x, float("nan"))
    mamba_chunk_scan_combined_varlen(out=out, **inputs.kernel_kwargs(layer))  # interpreted
    assert bool(torch.isfinite(out).all())
    assert {name: getattr(tl, name) for name in before} == before, "triton.language is still patched"
    pair = triton_compat.kernel_pair(kt.scale)
    with compile_only("cuda:90"):
        pair.compiled[(1,)](torch.randn(64), torch.empty(64), 64, 1, BLOCK=64, DOUBLE=True)
    assert triton_compat.cached_binaries(pair.compiled)
