"""The bundled Triton SSD kernel under Triton's interpreter (CPU; float32, one float16 case), against float64.

Small shapes (H 2-4, P 16, N 16, chunk 16/32): varlen batches with single-token sequences,
lengths that are and are not multiples of the chunk size, chunk boundaries inside sequences,
D of both shapes, z, initial states, 1 and 2 groups, dt_limit (a floor below 0 too), chunk 128
(chunk_scan's decay factored below the diagonal), head_dim above dstate, intermediate states. Outputs are
NaN-poisoned before each call; whole tensors are compared. Bad input raises ValueError before
any launch.
"""
from __future__ import annotations

import math

import pytest
import torch

import _ssd_cases
from _ssd_cases import (KernelCase, assert_states_matter, check_against_reference, check_intermediate_states,
                        run_kernel, with_slow_decay)
from pytest_ssd.adapters import poisoned_like
from pytest_ssd.kernels import arguments, combined, mamba_chunk_scan_combined_varlen

SMALL = dict(nheads=4, head_dim=16, ssm_state_size=16, chunk_size=16, dtype=torch.float32,
             state_dtype=torch.float32)

CASES = [
    KernelCase("single_token", [1]),
    KernelCase("varlen_mix", [1, 16, 33, 5]),
    KernelCase("initial_states", [20, 1, 9], initial_states=True, layer={"n_groups": 2}),
    KernelCase("z_and_D_per_channel", [19, 4], z=True, layer={"d_has_hdim": True}),
    KernelCase("dt_limit_no_softplus", [21, 3], layer={"dt_softplus": False, "dt_limit": (0.0, 0.1)}),
    KernelCase("mamba2_decay", [18, 1, 40], initial_states=True, slow_decay=False),
    KernelCase("tensor_parallel", [18, 2], layer={"nheads": 8, "n_groups": 4, "tp_size": 2}),
    KernelCase("chunk32_everything", [1, 35, 64, 1], initial_states=True, z=True,
               layer={"chunk_size": 32, "n_groups": 2, "d_has_hdim": True, "dt_limit": (0.005, 0.08)}),
    KernelCase("fp16_states", [17, 1], initial_states=True, layer={"state_dtype": torch.float16}),
    # 16-bit model: the hi/lo operand split on the tensor cores' path (the interpreter has no working bf16).
    KernelCase("fp16_model_long", [1, 150, 47], initial_states=True, layer={"dtype": torch.float16}),
    # chunk 128: two M-blocks of chunk_scan, so the decay factored below the diagonal block is run;
    # a dt_limit floor below 0 lets dt' be negative, and the decay is computed per tile instead.
    KernelCase("chunk128_factored_decay", [1, 300, 129], initial_states=True, layer={"chunk_size": 128}),
    KernelCase("chunk128_negative_dt_floor", [260, 3], initial_states=True,
               layer={"chunk_size": 128, "dt_softplus": False, "dt_limit": (-0.02, 0.1)}),
    # head_dim above dstate: chunk_state scales B's tile, not x's (SCALE_X off).
    KernelCase("head_dim_above_dstate", [40, 1, 17], initial_states=True, layer={"head_dim": 32}),
]


def make_case(case: KernelCase, seed: int, mixer2_layer, ssd_inputs):
    return _ssd_cases.make_case(case, SMALL, device="cpu", seed=seed, mixer2_layer=mixer2_layer, ssd_inputs=ssd_inputs)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_reference(case: KernelCase, ssd_seed, mixer2_layer, ssd_inputs) -> None:
    print(f"seed={ssd_seed} case={case}")
    layer, inputs = make_case(case, ssd_seed, mixer2_layer, ssd_inputs)
    check_against_reference(layer, inputs, seed=ssd_seed)


def test_initial_states_are_tested(ssd_seed, mixer2_layer, ssd_inputs) -> None:
    layer, inputs = make_case(CASES[2], ssd_seed, mixer2_layer, ssd_inputs)
    assert_states_matter(layer, inputs, seed=ssd_seed)


@pytest.mark.parametrize("case", [CASES[2], CASES[7]], ids=str)
def test_intermediate_states(case: KernelCase, ssd_seed, mixer2_layer, ssd_inputs) -> None:
    print(f"seed={ssd_seed} case={case}")
    layer, inputs = make_case(case, ssd_seed, mixer2_layer, ssd_inputs)
    check_intermediate_states(layer, inputs, seed=ssd_seed)


def test_state_dtype_defaults(ssd_seed, mixer2_layer, ssd_inputs) -> None:
    """Without ``state_dtype``: the initial states' dtype when given, else the model dtype."""
    layer = mixer2_layer(**{**SMALL, "state_dtype": torch.float16}, device="cpu")
    for with_init, want in ((True, torch.float16), (False, torch.float32)):
        inputs = ssd_inputs(layer, [3, 17], with_initial_states=with_init, device="cpu")
        kwargs = dict(inputs.kernel_kwargs(layer), state_dtype=None)
        states = mamba_chunk_scan_combined_varlen(out=torch.empty_like(inputs.x), **kwargs)
        assert states.dtype == want, \
            f"initial states {with_init}: got {states.dtype}, expected {want} (seed={ssd_seed})"


def test_metadata_as_int64_and_offset_views(ssd_seed, mixer2_layer, ssd_inputs) -> None:
    """Metadata may be int64 or a view at an odd offset: it is normalized (copied), results unchanged."""
    layer = mixer2_layer(**SMALL, device="cpu")
    inputs = ssd_inputs(layer, [5, 20, 1], device="cpu")
    base, _ = run_kernel(layer, inputs)
    kwargs = inputs.kernel_kwargs(layer)
    for name in ("cu_seqlens", "cu_chunk_seqlens", "seq_idx", "last_chunk_indices"):
        t = kwargs[name]
        kwargs[name] = torch.cat([t.new_zeros(1), t])[1:] if name == "seq_idx" else t.to(torch.int64)
    assert kwargs["seq_idx"].data_ptr() % 16 != 0
    out = poisoned_like(inputs.x)
    mamba_chunk_scan_combined_varlen(out=out, **kwargs)
    assert torch.equal(out, base), f"normalized metadata changed the output (seed={ssd_seed})"


# ---------------------------------------------------------------------------------------
# Bad input: a ValueError naming the argument, before any kernel launch.
# ---------------------------------------------------------------------------------------

def _misaligned(t: torch.Tensor) -> torch.Tensor:
    flat = torch.empty(t.numel() + 16, dtype=t.dtype)
    view = flat[1:1 + t.numel()].view(t.shape)
    view.copy_(t)
    return view


BAD_INPUTS = [
    ("x", lambda kw: dict(kw, x=kw["x"][:, :, None]), r"^x: expected 3 dimensions"),
    ("dt", lambda kw: dict(kw, dt=kw["dt"][:-1]), r"^dt: dimension 0 \(T\)"),
    ("B", lambda kw: dict(kw, B=kw["B"][:-1]), r"^B: dimension 0 \(T\)"),
    ("C", lambda kw: dict(kw, C=kw["C"].repeat(1, 2, 1)), r"^C: dimension 1 \(G\)"),
    ("x dtype", lambda kw: dict(kw, x=kw["x"].double()), r"^x: expected dtype in"),
    ("B dtype", lambda kw: dict(kw, B=kw["B"].half()), r"^B: expected dtype in \(float32\), got float16"),
    ("A dtype", lambda kw: dict(kw, A=kw["A"].half()), r"^A: expected dtype in \(float32\)"),
    ("D shape", lambda kw: dict(kw, D=kw["D"][:-1]), r"^D: expected shape"),
    ("z shape", lambda kw: dict(kw, z=kw["x"][:-1]), r"^z: dimension 0 \(T\)"),
    ("initial_states", lambda kw: dict(kw, initial_states=torch.randn(5, 4, 16, 16)), r"^initial_states: dimension 0"),
    ("initial_states dtype", lambda kw: dict(kw, initial_states=torch.ones(3, 4, 16, 16, dtype=torch.int32)),
     r"^initial_states: expected dtype in"),
    ("state_dtype", lambda kw: dict(kw, state_dtype=torch.int8), r"^state_dtype: expected one of"),
    ("device", lambda kw: dict(kw, dt_bias=kw["dt_bias"].to("meta")), r"^dt_bias: expected device cpu"),
    ("x contiguous", lambda kw: dict(kw, x=kw["x"].transpose(1, 2).contiguous().transpose(1, 2)),
     r"^x: expected a contiguous tensor"),
    ("x aligned", lambda kw: dict(kw, x=_misaligned(kw["x"])), r"^x: expected a 16-byte aligned data pointer"),
    ("out aligned", lambda kw: dict(kw, out=_misaligned(kw["out"])), r"^out: expected a 16-byte aligned"),
    ("chunk_size", lambda kw: dict(kw, chunk_size=24), r"^chunk_size: expected a power of two >= 16"),
    ("chunk_size small", lambda kw: dict(kw, chunk_size=8), r"^chunk_size: expected a power of two >= 16"),
    ("groups", lambda kw: dict(kw, B=kw["B"].repeat(1, 3, 1), C=kw["C"].repeat(1, 3, 1)),
     r"^nheads \(dimension 1 of x\)=4 must be divisible by ngroups"),
    ("dt_limit", lambda kw: dict(kw, dt_limit=(0.5, 0.1)), r"^dt_limit: expected low <= high"),
    ("cu_seqlens end", lambda kw: dict(kw, cu_seqlens=torch.tensor([0, 5, 25, 27], dtype=torch.int32)),
     r"^cu_seqlens: expected to end at T=26"),
    ("cu_seqlens dtype", lambda kw: dict(kw, cu_seqlens=kw["cu_seqlens"].float()), r"^cu_seqlens: expected dtype in"),
    ("cu_chunk_seqlens", lambda kw: dict(kw, cu_chunk_seqlens=torch.tensor([0, 5, 20, 25, 26],
                                                                         dtype=torch.int32)),
     r"^cu_chunk_seqlens: disagrees with cu_seqlens"),
    ("seq_idx", lambda kw: dict(kw, seq_idx=torch.tensor([0, 1, 2, 2], dtype=torch.int32)),
     r"^seq_idx: disagrees with cu_seqlens"),
    ("last_chunk_indices", lambda kw: dict(kw, last_chunk_indices=torch.tensor([0, 1, 3], dtype=torch.int32)),
     r"^last_chunk_indices: disagrees with cu_seqlens"),
    ("seq_idx length", lambda kw: dict(kw, seq_idx=kw["seq_idx"][:-1]), r"^cu_chunk_seqlens: expected shape"),
    ("not a tensor", lambda kw: dict(kw, x=kw["x"].tolist()), r"^x: expected a torch.Tensor"),
    ("out dtype", lambda kw: dict(kw, out=kw["out"].half()), r"^out: expected dtype in \(float32\)"),
    ("z dtype", lambda kw: dict(kw, z=kw["z"].double()), r"^z: expected dtype in \(float32\)"),
    ("dt_bias dtype", lambda kw: dict(kw, dt_bias=kw["dt_bias"].double()), r"^dt_bias: expected dtype in"),
    ("metadata dtype", lambda kw: dict(kw, seq_idx=kw["seq_idx"].to(torch.int16)), r"^seq_idx: expected dtype in"),
    ("cu_seqlens 2-D", lambda kw: dict(kw, cu_seqlens=kw["cu_seqlens"][None]), r"^cu_seqlens: expected 1 dim"),
    ("dt_limit pair", lambda kw: dict(kw, dt_limit=(0.1,)), r"^dt_limit: expected a pair"),
    ("chunk_size float", lambda kw: dict(kw, chunk_size=16.0), r"^chunk_size: expected a power of two"),
    ("dt not a tensor", lambda kw: dict(kw, dt=kw["dt"].numpy()), r"^dt: expected a torch.Tensor"),
    ("chunk_size huge", lambda kw: dict(kw, chunk_size=2**22), r"^chunk_size: expected a power of two >= 16 and <= 1024"),
    ("dt_softplus str", lambda kw: dict(kw, dt_softplus="no"), r"^dt_softplus: expected True or False, got 'no'"),
    ("dt_softplus int", lambda kw: dict(kw, dt_softplus=1), r"^dt_softplus: expected True or False"),
    ("return_intermediate_states", lambda kw: dict(kw, return_intermediate_states=None),
     r"^return_intermediate_states: expected True or False"),
    ("out is x", lambda kw: dict(kw, out=kw["x"]), r"^out: shares memory with x"),
    ("out inside z", lambda kw: dict(kw, out=kw["z"].view(-1)[:kw["x"].numel()].view(kw["x"].shape)),
     r"^out: shares memory with z"),
    ("out over B", lambda kw: dict(kw, B=kw["out"].view(-1)[:kw["B"].numel()].view(kw["B"].shape)),
     r"^out: shares memory with B"),
    ("requires grad", lambda kw: dict(kw, x=kw["x"].requires_grad_()), r"^x: requires grad, but this kernel is forward-only"),
    ("A requires grad", lambda kw: dict(kw, A=kw["A"].clone().requires_grad_()), r"^A: requires grad"),
    ("out requires grad", lambda kw: dict(kw, out=kw["out"].requires_grad_()), r"^out: requires grad"),
]


@pytest.mark.parametrize("name,mutate,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_raises_before_any_launch(name, mutate, message, mixer2_layer, ssd_inputs, monkeypatch) -> None:
    layer = mixer2_layer(**SMALL, device="cpu")
    inputs = ssd_inputs(layer, [5, 20, 1], with_z=True, with_initial_states=True, device="cpu")  # 4 chunks
    kwargs = dict(inputs.kernel_kwargs(layer), out=poisoned_like(inputs.x))

    def no_launch(*args):
        raise AssertionError("a kernel was launched before the bad argument was rejected")

    monkeypatch.setattr(combined, "_launch", no_launch)
    bad = mutate(kwargs)
    with pytest.raises(ValueError, match=message):
        mamba_chunk_scan_combined_varlen(**bad)
    # The cheap pass a request takes agrees with the full checks: it turns away everything they
    # reject (metadata contents are checked after both).
    positional = [bad[k] for k in ("x", "dt", "A", "B", "C", "out", "D", "z", "dt_bias", "initial_states")]
    rest = (tuple(bad[k] for k in combined.METADATA_NAMES), bad["chunk_size"], bad.get("dt_limit", (0.0, math.inf)),
            bad.get("state_dtype"), bad.get("dt_softplus", False), bad.get("return_intermediate_states", False))
    try:
        full = arguments.validate(*positional, *rest)
    except ValueError:
        full = None
    assert arguments.fast_sizes(*positional, *rest) == full


def test_the_bad_input_fixture_is_otherwise_valid(mixer2_layer, ssd_inputs) -> None:
    layer = mixer2_layer(**SMALL, device="cpu")
    inputs = ssd_inputs(layer, [5, 20, 1], with_z=True, with_initial_states=True, device="cpu")
    assert inputs.cu_chunk_seqlens.tolist() == [0, 5, 21, 25, 26]
    out, _ = run_kernel(layer, inputs)
    assert torch.isfinite(out).all()


def test_default_dt_limit_clamps_a_negative_dt_to_zero(mixer2_layer, ssd_inputs, ssd_seed) -> None:
    """No softplus and the default dt_limit (0, inf): a negative dt' becomes 0, as in vLLM's and
    mamba_ssm's kernels and the reference; the unclamped result differs, so the clamp is tested."""
    import dataclasses
    import inspect

    from pytest_ssd.reference import ssd_reference

    print(f"seed={ssd_seed}")
    assert inspect.signature(mamba_chunk_scan_combined_varlen).parameters["dt_limit"].default == (0.0, math.inf)
    layer = with_slow_decay(mixer2_layer(**dict(SMALL, dt_softplus=False), device="cpu"), ssd_seed)
    inputs = ssd_inputs(layer, [37, 1, 20], with_initial_states=True, device="cpu")
    inputs = dataclasses.replace(inputs, dt=0.05 * inputs.dt)  # dt' = dt + dt_bias around [-0.1, 0.2]
    dt_prime = inputs.dt + layer.dt_bias
    assert bool((dt_prime < 0).any()) and bool((dt_prime > 0).any()), f"seed={ssd_seed}"
    check_against_reference(layer, inputs, seed=ssd_seed)
    out, _ = run_kernel(layer, inputs)
    unclamped, _ = ssd_reference(**dict(inputs.reference_kwargs(layer), dt_limit=(-math.inf, math.inf)),
                                 output_dtype=torch.float64)
    assert float((out.double() - unclamped).abs().max()) > 1e-3, f"the clamp changed nothing (seed={ssd_seed})"


def _launched_constexprs(monkeypatch) -> list:
    """From now on, each launch's constexprs (in launch order), appended to the returned list."""
    seen = []
    real = combined._launch

    def spy(stage, grid, args, device_index, stream):
        seen.append(dict(stage.constexprs))
        real(stage, grid, args, device_index, stream)

    monkeypatch.setattr(combined, "_launch", spy)
    return seen


def test_a_config_override_replans_and_then_restores(mixer2_layer, ssd_inputs, ssd_seed, monkeypatch) -> None:
    """The tuning sweep's overrides reach the launches (cached plans are dropped), and go away after."""
    from pytest_ssd.kernels import configs

    layer = mixer2_layer(**SMALL, device="cpu")
    inputs = ssd_inputs(layer, [5, 20, 1], device="cpu")
    seen = _launched_constexprs(monkeypatch)

    def scan_blocks():  # checks the numbers too: a block larger than the chunk must still be right
        seen.clear()
        check_against_reference(layer, inputs, seed=ssd_seed)
        return seen[-1]["BLOCK_M"]  # chunk_scan launches last

    default = scan_blocks()
    with configs.overridden("chunk_scan", configs.LaunchConfig({"BLOCK_M": 32}, num_warps=2, num_stages=1)):
        assert scan_blocks() == 32 != default
    assert scan_blocks() == default


@pytest.mark.parametrize("nchunks", [1, 3, 27])
def test_workspace_buffers_are_aligned_and_disjoint_and_shaped_where_returned(nchunks) -> None:
    """The intermediates are flat views of one allocation (the kernels take only their data
    pointers): each 256 bytes apart from the allocation's start, long enough for its buffer,
    with no two overlapping; ``shaped`` gives a buffer back as the contiguous tensor a caller
    sees (the intermediate states). Odd per-chunk sizes (3 heads x 16) exercise the padding."""
    layout = combined._Workspace.of((3, 16), (3, 16), (1, 16, 16), (3, 5, 7))
    views = layout.carve(nchunks, torch.device("cpu"))
    base = views[0].untyped_storage().data_ptr()  # the CUDA allocator aligns it to 512 bytes, the CPU one to 64
    assert base % 64 == 0
    spans = []
    for index, (shape, view) in enumerate(zip(layout.shapes, views)):
        assert view.dim() == 1 and view.numel() >= nchunks * math.prod(shape) and view.dtype == torch.float32
        assert view.untyped_storage().data_ptr() == base and (view.data_ptr() - base) % 256 == 0
        spans.append((view.data_ptr(), view.data_ptr() + view.numel() * 4))
        shaped = layout.shaped(index, view, nchunks)
        assert shaped.shape == (nchunks, *shape) and shaped.is_contiguous() and shaped.data_ptr() == view.data_ptr()
    spans.sort()
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:])), spans
    assert spans[-1][1] <= base + views[0].untyped_storage().nbytes()


def test_interpreted_calls_from_threads_are_serialized_and_right(mixer2_layer, ssd_inputs, ssd_seed) -> None:
    """Triton's interpreter patches triton.language while it runs: concurrent calls used to fail in
    3 of 4 threads (InterpreterError). Each thread's result equals the same call made alone."""
    import threading

    layer = mixer2_layer(**SMALL, device="cpu")
    batches = [ssd_inputs(layer, seqlens, with_initial_states=True, device="cpu")
               for seqlens in ([5, 20], [1, 33], [17], [16, 16, 2])]
    alone = [run_kernel(layer, inputs)[0] for inputs in batches]
    results, errors = [None] * len(batches), []
    barrier = threading.Barrier(len(batches))

    def work(i):
        try:
            barrier.wait(timeout=60)
            results[i] = run_kernel(layer, batches[i])[0]
        except BaseException as error:  # surfaced below: a thread's exception is otherwise lost
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert errors == [], f"seed={ssd_seed}: {errors!r}"
    assert all(torch.equal(a, b) for a, b in zip(alone, results)), f"seed={ssd_seed}"


@pytest.mark.parametrize("dt_limit, factored", [((0.0, math.inf), True), ((0.001, 0.5), True), ((-1.0, math.inf), False)])
def test_the_decay_is_factored_only_where_dt_cannot_be_negative(dt_limit, factored, mixer2_layer, ssd_inputs,
                                                                ssd_seed, monkeypatch) -> None:
    """chunk_scan factors exp(dA_i - dA_j) into a scale per source and one per target below the
    diagonal block; that is safe only for a monotone dA cumsum (dt' >= 0). With softplus, a floor
    of -1 changes no dt' but makes the plan take the decay per tile: both paths give the same
    numbers, and both match the float64 reference (chunk 64 in M-blocks of 16: three blocks below
    the diagonal)."""
    from pytest_ssd.kernels import configs

    print(f"seed={ssd_seed} dt_limit={dt_limit}")
    layer = mixer2_layer(**dict(SMALL, chunk_size=64, dt_limit=dt_limit), device="cpu")
    inputs = ssd_inputs(layer, [150, 1, 64], with_initial_states=True, device="cpu")
    seen = _launched_constexprs(monkeypatch)

    scan = configs.default_configs(configs.LayerDims(4, 1, 16, 16, 64, torch.float32))["chunk_scan"]
    with configs.overridden("chunk_scan", configs.LaunchConfig({**scan.blocks, "BLOCK_M": 16, "BLOCK_K": 16},
                                                               scan.num_warps, scan.num_stages)):
        check_against_reference(layer, inputs, seed=ssd_seed)
        assert seen[-1]["FACTORED_DECAY"] is factored and seen[-1]["BLOCK_M"] == 16
        if dt_limit == (0.0, math.inf):  # the same dt' per tile: equal to the bf16x3 products' ~16 bits
            out, _ = run_kernel(layer, inputs)
            per_tile = poisoned_like(inputs.x)
            mamba_chunk_scan_combined_varlen(out=per_tile, **dict(inputs.kernel_kwargs(layer), dt_limit=(-1.0, math.inf)))
            assert seen[-1]["FACTORED_DECAY"] is False
            assert not torch.equal(out, per_tile), "the two paths gave bit-equal outputs: one of them did not run"
            torch.testing.assert_close(out, per_tile, rtol=1e-4, atol=1e-4, msg=lambda m: f"seed={ssd_seed}: {m}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("fuse", [True, False], ids=["bmm_in_chunk_state", "bmm_alone"])
def test_bmm_tiles_in_chunk_states_grid_or_alone_give_the_same_numbers(fuse, dtype, mixer2_layer, ssd_inputs, ssd_seed,
                                                                     monkeypatch) -> None:
    """``FUSE_BMM`` puts bmm's C.B^T tiles in grid rows after chunk_state's heads. Here 3 groups
    of 4 bmm tiles each (16 x 16 of a 32-token chunk) in rows of 8 chunk_state tiles (16 x 16 of
    head_dim 32 x dstate 64): two rows, the last 4 programs idle (tiles of 16: Triton 3.2's
    interpreter takes no smaller dot). Both plans match the float64 reference, in 3 launches or 4."""
    from pytest_ssd.kernels import configs

    print(f"seed={ssd_seed} fuse={fuse}")
    layer = mixer2_layer(**dict(SMALL, nheads=6, n_groups=3, head_dim=32, ssm_state_size=64, chunk_size=32,
                                dtype=dtype), device="cpu")
    inputs = ssd_inputs(layer, [70, 1, 33], with_initial_states=True, device="cpu")
    seen = _launched_constexprs(monkeypatch)
    base = configs.default_configs(configs.LayerDims(6, 3, 32, 64, 32, dtype))["chunk_state"]
    state = configs.LaunchConfig({**base.blocks, "BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "FUSE_BMM": fuse},
                                 base.num_warps, base.num_stages)
    bmm = configs.LaunchConfig({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16}, 2, 1)
    with configs.overridden("chunk_state", state), configs.overridden("bmm_chunk", bmm):
        check_against_reference(layer, inputs, seed=ssd_seed)
        plans = next(iter(combined._PLANS.values()))
    assert len(seen) == (3 if fuse else 4) and seen[0]["FUSE_BMM"] is fuse \
        and seen[0]["BMM_BLOCK_M"] == (16 if fuse else None)  # unfused, bmm's config stays out of the binary
    assert plans.chunk_state.tiles == 8 and plans.bmm_rows == (2 if fuse else 0)
