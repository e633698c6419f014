"""The entry point: argument checks, then the four kernels of chunked SSD (see docs/kernel.md).

Dispatch: CPU tensors outside compile-only mode run the interpreted kernels (numerics on any
machine); CUDA tensors, and any tensors inside :func:`pytest_ssd.compile_only.compile_only`, run
the compiled kernels through Triton's real JIT path. Inside :func:`collect_launches` the compiled
path records its four launches instead of launching them (the warmup compiles their binaries
side by side from that record).

What a request can change, and what it cannot (this is what makes one warmup cover every batch):
token counts, sequence counts and chunk counts reach the kernels only through the *contents* of
the metadata tensors and through the grid, never as integer arguments, so no ``==1``/``%16``
specialization can depend on them; intermediate buffers put the request-dependent dimension
first, so strides are layer constants; data pointers must be 16-byte aligned, and the kernels
read metadata only from a private aligned int32 copy (:class:`pytest_ssd.chunking.SealedMetadata`). The binaries a call uses are therefore fixed by the layer, the
model/state dtypes and the flags ``HAS_INITSTATES``, ``HAS_D``, ``D_HAS_HDIM``, ``HAS_Z``,
``dt_softplus``, whether dt' is clamped (``dt_limit`` other than ``(0, inf)``, or no softplus) and
whether it can be negative (a ``dt_limit`` floor below 0).

Host time per call (a request's latency, when the GPU waits for it): the argument checks take
one cheap pass (:func:`pytest_ssd.kernels.arguments.fast_sizes`; the full checks with their messages run only when it
balks); the four launches' constexprs and grids are planned once per layer and flags
(:func:`_stage_plans`, kept per flat key in ``_PLANS``); on a GPU, after Triton's JIT has picked a stage's binary once, later
launches go to that binary directly (:class:`pytest_ssd.triton_compat.DirectLauncher`); and
metadata built by :func:`pytest_ssd.chunking.chunk_metadata` is not read back.

Memory safety: the kernels index memory with the chunk metadata, so they never read the
caller's metadata tensors. They read a private int32 copy, built from values that were checked
on the host (by :func:`pytest_ssd.chunking.chunk_metadata`, or here once per set of tensors), that
no caller holds: a write to the caller's tensors after the check (``.data``, ``.numpy()``,
DLPack, another kernel) cannot reach them (:class:`pytest_ssd.chunking.SealedStore`).
"""
from __future__ import annotations

import contextlib
import functools
import math
import threading
from dataclasses import dataclass
from typing import Any, Iterator, NamedTuple, Optional, Sequence

import torch
import triton
import triton.language as tl

from .. import chunking
from ..chunking import METADATA_NAMES
from ..compile_only import active_target, compile_only_active
from ..triton_compat import DirectLauncher, watch_jit_cache
from ..validation import check_int32_values, check_offsets
from .arguments import fast_sizes, validate
from .bmm import BMM_CHUNK
from .chunk_scan import CHUNK_SCAN
from .chunk_state import CHUNK_STATE
from . import configs
from .configs import LayerDims
from .state_passing import STATE_PASSING


def mamba_chunk_scan_combined_varlen(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    cu_seqlens: torch.Tensor,
    cu_chunk_seqlens: torch.Tensor,
    last_chunk_indices: torch.Tensor,
    seq_idx: torch.Tensor,
    out: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    dt_bias: Optional[torch.Tensor] = None,
    initial_states: Optional[torch.Tensor] = None,
    dt_softplus: bool = False,
    dt_limit: Sequence[float] = (0.0, float("inf")),
    return_intermediate_states: bool = False,
    state_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """Mamba2 SSD forward over a packed varlen batch, with vLLM's arguments and conventions.

    Shapes (T tokens, S sequences, C chunks, H heads, P head_dim, G groups, N dstate):
    ``x`` (T,H,P), ``dt`` (T,H), ``B``/``C`` (T,G,N), ``z`` (T,H,P) and ``out`` (T,H,P), all in
    one model dtype (float32, float16 or bfloat16), contiguous, 16-byte aligned; ``A``,
    ``dt_bias`` (H,) and ``D`` (H,) or (H,P) float32; ``initial_states`` (S,H,P,N) in float32,
    float16 or bfloat16. Metadata as :func:`pytest_ssd.chunking.chunk_metadata` builds it:
    ``cu_seqlens`` (S+1,), ``cu_chunk_seqlens`` (C+1,), ``seq_idx`` (C,), ``last_chunk_indices``
    (S,), integer tensors, every value within int32. Metadata that
    :func:`pytest_ssd.chunking.chunk_metadata` built is right by construction; any other is
    checked against ``cu_seqlens`` once per set of tensors (one small device-to-host copy). The
    kernels read a private copy of what was checked, never the caller's tensors.
    ``dt_softplus`` and ``return_intermediate_states`` are bools. Limits: T <= 2**31 - 1,
    at most 65535 sequences and 65535 chunks per call, ``chunk_size`` a power of two in
    [16, 1024]. Forward only: inputs that require grad are refused while grad mode is on.

    Computes, per sequence, ``dt' = clamp(softplus(dt + dt_bias), *dt_limit)`` (softplus when
    ``dt_softplus``; the clamp always, as vLLM's and mamba_ssm's kernels, so without softplus the
    default ``(0, inf)`` turns a negative dt' into 0), ``h_t = exp(dt'_t A) h_{t-1} +
    dt'_t x_t B_t^T`` from ``initial_states`` (or zero), ``y_t = C_t h_t + D x_t``, times
    ``z_t * sigmoid(z_t)`` when ``z`` is given, and writes ``y`` into ``out``.

    Returns the final state of every sequence (S,H,P,N), or with
    ``return_intermediate_states`` the state at the end of every chunk (C,H,P,N), in
    ``state_dtype``; by default the dtype of ``initial_states`` when given, else ``x``'s dtype.
    States are computed in float32 and cast once at the end.

    Raises ``ValueError`` naming the argument, before any kernel launch, on bad input.
    """
    metadata = (cu_seqlens, cu_chunk_seqlens, seq_idx, last_chunk_indices)
    tensors = (x, dt, A, B, C, out, D, z, dt_bias, initial_states)
    sizes = fast_sizes(*tensors, metadata, chunk_size, dt_limit, state_dtype, dt_softplus, return_intermediate_states)
    if sizes is None:  # something is off: the full checks say what
        sizes = validate(*tensors, metadata, chunk_size, dt_limit, state_dtype, dt_softplus,
                          return_intermediate_states)
    T, H, P, G, N, S, nchunks, lo, hi, device = sizes

    real = not compile_only_active()  # compile-only launches are fake: compiled kernels, nothing kept
    interpret, direct = real and device.type == "cpu", real and device.type == "cuda"
    key = (H, G, P, N, chunk_size, x.dtype, None if initial_states is None else initial_states.dtype,
           D is not None, D is not None and D.dim() == 2, z is not None, dt_bias is not None, dt_softplus,
           (lo, hi) != (0.0, math.inf) or not dt_softplus,  # clamp dt': (0, inf) is a no-op only after softplus
           lo >= 0.0,  # dt' >= 0 (softplus, or the clamp's floor): chunk_scan may factor the decay
           interpret, None if real else active_target())  # _stage_plans' arguments: built and hashed on every call
    plans = _PLANS.get(key) or _plans_for(key)
    with _device_guard(device), (_INTERPRETER_LOCK if interpret else _NO_GUARD):
        # Until the first launch the GPU waits for the host: only what the first stage needs
        # comes before it (and the metadata check, whose device-to-host copy comes last).
        sealed = chunking.SEALED.lookup(metadata, chunk_size, T)
        dt_out, dA_cumsum, CB, chunk_states = plans.workspace.carve(nchunks, device)
        if sealed is None:
            sealed = _check_metadata(metadata, S, nchunks, chunk_size, T, device)
        cu_chunks, seq_idx32, last32 = sealed  # private, checked copies: what the kernels read
        device_index = device.index if direct else None
        stream = _LAUNCHER.stream(device_index) if direct else None
        chunk_state, bmm, state_passing, chunk_scan = plans[:4]
        collected = _COLLECTING.get(threading.get_ident()) if _COLLECTING and not interpret else None
        launch = _launch if collected is None else functools.partial(_collect, collected)
        launch(chunk_state, (chunk_state.tiles, nchunks, H + plans.bmm_rows),
               (x, B, dt, A, dt_bias, cu_chunks, dt_out, dA_cumsum, chunk_states, C, CB, lo, hi), device_index, stream)
        if not plans.bmm_rows:  # C.B^T on a launch of its own (chunk_state's grid has no rows for it)
            launch(bmm, (bmm.tiles, nchunks, G), (C, B, cu_chunks, CB), device_index, stream)
        final_states = torch.empty((S, H, P, N), dtype=torch.float32, device=device)
        launch(state_passing, (state_passing.tiles, H, S),
               (chunk_states, dA_cumsum, initial_states, last32, final_states), device_index, stream)
        launch(chunk_scan, (chunk_scan.tiles, nchunks, H),
               (x, z, out, C, CB, dt_out, dA_cumsum, chunk_states, initial_states, D, cu_chunks, seq_idx32),
               device_index, stream)
    if state_dtype is None:
        state_dtype = initial_states.dtype if initial_states is not None else x.dtype
    result = plans.workspace.shaped(_STATES, chunk_states, nchunks) if return_intermediate_states else final_states
    return result if result.dtype == state_dtype else result.to(state_dtype)


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: one object per cached plan
class _StagePlan:
    """What one of the four launches takes that the layer and the call's flags fix."""

    kernel: Any  # the compiled (JITFunction) or the interpreted kernel
    constexprs: dict  # constexpr arguments and launch options
    tiles: int  # programs per (chunk or head, ...) cell: grid axis 0


class _Workspace(NamedTuple):
    """Where the float32 intermediates of a call of ``nchunks`` chunks lie in one allocation.

    Every buffer has the chunk dimension first, so its strides and its start per chunk are
    layer constants (the kernels compute their offsets from the layer's dims: they take only
    the data pointer); a call only multiplies by ``nchunks``.
    """

    shapes: tuple  # per buffer: the shape after the chunk dimension
    spans: tuple  # per buffer: elements per chunk, padded to a multiple of 64 (each start 256-byte aligned)
    per_chunk: int  # elements per chunk, all buffers

    @classmethod
    def of(cls, *shapes: tuple) -> "_Workspace":
        spans = tuple(-(-math.prod(shape) // 64) * 64 for shape in shapes)
        return cls(shapes, spans, sum(spans))

    def carve(self, nchunks: int, device: torch.device) -> tuple:
        """The buffers for ``nchunks`` chunks, flat: one allocator call and one split.

        One allocation instead of four: less host time per call, and a request larger than
        any before it pays for one new device allocation, not four. Flat views, because the
        kernels read only their data pointers and a split is half the host time of four
        shaped views (an H200's host: 5.9 against 10.6 us); :meth:`shaped` gives a buffer its
        shape where a caller sees it.
        """
        flat = torch.empty(nchunks * self.per_chunk, dtype=torch.float32, device=device)
        return flat.split_with_sizes([nchunks * span for span in self.spans])

    def shaped(self, index: int, buffer: torch.Tensor, nchunks: int) -> torch.Tensor:
        """Buffer ``index`` of :meth:`carve` as the contiguous ``(nchunks, *shape)`` tensor it holds."""
        shape = self.shapes[index]
        return buffer[:nchunks * math.prod(shape)].view(nchunks, *shape)


_STATES = 3  # the chunk states' buffer in the workspace: the one a call may return


class _Plans(NamedTuple):
    """The four stages' plans, in launch order, and the workspace layout."""

    chunk_state: _StagePlan
    bmm: _StagePlan
    state_passing: _StagePlan
    chunk_scan: _StagePlan
    workspace: _Workspace
    bmm_rows: int  # grid rows chunk_state adds past its heads for bmm's tiles (FUSE_BMM); 0: bmm launches alone


_PLANS: dict = {}  # the entry point's flat key (_stage_plans' arguments, in order) -> _Plans


def _plans_for(key: tuple) -> _Plans:
    """Build and keep the plans for a flat call key (see the entry point)."""
    plans = _PLANS[key] = _stage_plans(*key)
    return plans


def _stage_plans(H: int, G: int, P: int, N: int, L: int, dtype: torch.dtype, init_dtype: Optional[torch.dtype],
                 has_D: bool, D_has_hdim: bool, has_z: bool, has_dt_bias: bool, dt_softplus: bool,
                 has_dt_limit: bool, dt_nonneg: bool, interpret: bool, target: Optional[str] = None) -> _Plans:
    """The four stages' plans, in launch order, and the workspace, for a layer (H heads, G
    groups, P head dim, N dstate, L chunk size, model ``dtype``) and a call's flags
    (``init_dtype`` None: no initial states; ``dt_nonneg``: dt' cannot be negative, so the dA
    cumsum of a head is monotone and chunk_scan factors the decay below the diagonal); ``target``
    is the compile-only target, None for a real device.

    Chunk state (with the dt cumsum) goes first: it is long enough on the GPU to hide the host
    time of the launches behind it. The arguments, with the call's device, fix the binary Triton
    picks for each stage (``init_dtype`` is the one pointer dtype that is neither the model
    dtype nor float32), which is what lets :func:`_launch` keep it.
    """
    has_init = init_dtype is not None
    dims = LayerDims(H, G, P, N, L, dtype)
    cfg = configs.configs_for(dims)
    amd = target.startswith("hip") if target else (not interpret and torch.version.hip is not None)
    dots = configs.dot_plan(dtype, amd=amd)
    narrow = _TL_DTYPES[dots.narrow]
    # bf16 pieces multiply in float32 under the interpreter (its bf16 dot returns garbage, Triton
    # 3.6-3.9): the same bf16 values, multiplied exactly as the tensor cores multiply them.
    dot_dtype = _TL_DTYPES[torch.float32] if interpret and dots.narrow == torch.bfloat16 else narrow
    precision = dict(DOT_PRECISION=dots.input_precision, NARROW=narrow, DOT_DTYPE=dot_dtype)
    # bf16 pieces round two at a time on CUDA sm_80+ (kernels/narrow.py; older GPUs have no packed
    # bf16 conversion): not in the interpreter, not on AMD; not in a float32 model's chunk_state
    # either, which it made slower on an H200 (0.115 -> 0.127 ms).
    pack_bf16 = dots.narrow == torch.bfloat16 and not interpret and not amd and _cuda_arch(target) >= 80
    common = dict(SPLIT_F32=dots.split_f32, SPLIT_MODEL=dots.split_model, INTERPRETED=interpret, PACK_BF16=pack_bf16,
                  **precision)

    def stage(name, kernel, tiles, **constexprs):
        c = cfg[name]
        return _StagePlan(kernel.pick(interpret), dict(constexprs, **c.launch_kwargs(interpret, cuda=not amd)),
                          tiles(c.blocks))

    state_blocks, bmm_blocks = cfg["chunk_state"].blocks, cfg["bmm_chunk"].blocks
    # bmm's tiles run in chunk_state's launch, in rows past its heads (chunk_state.py's FUSE_BMM);
    # unfused, its BMM_* constexprs are None, so bmm's config does not reach chunk_state's binary
    fuse_bmm = state_blocks["FUSE_BMM"]
    chunk_state = stage(
        # SCALE_X: the decay scale on the smaller of chunk_state's two tiles (x's when BLOCK_M <= BLOCK_N)
        "chunk_state", CHUNK_STATE, lambda b: triton.cdiv(P, b["BLOCK_M"]) * triton.cdiv(N, b["BLOCK_N"]),
        FUSE_BMM=fuse_bmm, **{f"BMM_{k}": v if fuse_bmm else None for k, v in bmm_blocks.items()},
        SCALE_X=state_blocks["BLOCK_M"] <= state_blocks["BLOCK_N"],
        H=H, G=G, P=P, N=N, CHUNK_SIZE=L, HAS_DT_BIAS=has_dt_bias, DT_SOFTPLUS=dt_softplus,
        HAS_DT_LIMIT=has_dt_limit, **dict(common, PACK_BF16=pack_bf16 and not dots.split_model))
    bmm = stage("bmm_chunk", BMM_CHUNK, lambda b: (L // b["BLOCK_M"]) * (L // b["BLOCK_N"]),
                G=G, N=N, CHUNK_SIZE=L, SPLIT_MODEL=dots.split_model, **precision)
    return _Plans(
        chunk_state,
        bmm,
        stage("state_passing", STATE_PASSING, lambda b: triton.cdiv(P * N, b["BLOCK"]),
              H=H, DIM=P * N, CHUNK_SIZE=L, HAS_INITSTATES=has_init),
        stage("chunk_scan", CHUNK_SCAN, lambda b: triton.cdiv(L, b["BLOCK_M"]) * triton.cdiv(P, b["BLOCK_N"]),
              H=H, G=G, P=P, N=N, CHUNK_SIZE=L, HAS_INITSTATES=has_init, HAS_D=has_D, D_HAS_HDIM=D_has_hdim,
              HAS_Z=has_z, FACTORED_DECAY=dt_nonneg, **common),
        # dt', dA cumsum, C.B^T, chunk states (index _STATES)
        _Workspace.of((H, L), (H, L), (G, L, L), (H, P, N)),
        triton.cdiv(G * bmm.tiles, chunk_state.tiles) if fuse_bmm else 0,
    )


def _cuda_arch(target: Optional[str]) -> int:
    """The CUDA architecture a plan compiles for, as 90 for sm_90: the compile-only target's, else
    the current device's (a process whose GPUs differ in architecture shares the first's plans)."""
    if target is not None:
        return int(target.split(":")[1]) if target.startswith("cuda:") else 0
    major, minor = torch.cuda.get_device_capability()
    return 10 * major + minor


_LAUNCHER = DirectLauncher()
# Every recording counts these kernels' JIT caches, so a compile no hook reported still shows.
watch_jit_cache(CHUNK_STATE.compiled, BMM_CHUNK.compiled, STATE_PASSING.compiled, CHUNK_SCAN.compiled)


def _launch(stage: _StagePlan, grid: tuple, args: tuple, device_index: Optional[int], stream: Any) -> None:
    """Launch one stage; on a real GPU (``device_index`` given) warm launches skip Triton's
    dispatch and go to the binary it picked, on ``stream`` (looked up once per call)."""
    key = None if device_index is None else (stage, device_index)
    _LAUNCHER.launch(stage.kernel, grid, args, stage.constexprs, key, stream)


class CollectedLaunch(NamedTuple):
    """One launch of the compiled path, recorded instead of launched (:func:`collect_launches`):
    ``kernel[grid](*args, **constexprs)`` is what the call would have run."""

    kernel: Any  # a JITFunction
    grid: tuple
    args: tuple  # the leading parameters, in order: tensors (or None) and floats
    constexprs: dict  # the rest by name, and the launch options (num_warps, num_stages)


_COLLECTING: dict = {}  # thread id -> its list of CollectedLaunch, inside collect_launches()


@contextlib.contextmanager
def collect_launches() -> Iterator[list]:
    """Inside the block, this thread's calls of the entry point that take the compiled path
    (CUDA tensors, or any tensors under :func:`pytest_ssd.compile_only.compile_only`) check
    their arguments and plan as always, then append their four launches to the yielded list
    (:class:`CollectedLaunch`, in launch order) instead of launching them: nothing compiles,
    nothing runs, outputs stay unwritten. Interpreted calls run as always and add nothing.

    For :func:`pytest_ssd.warmup.warmup_ssd_kernels`, which compiles the collected launches'
    binaries side by side before its real calls. Other threads' calls are not collected.
    """
    me = threading.get_ident()
    if me in _COLLECTING:
        raise RuntimeError("collect_launches() is already active in this thread: blocks do not nest")
    _COLLECTING[me] = collected = []
    try:
        yield collected
    finally:
        del _COLLECTING[me]


def _collect(collected: list, stage: _StagePlan, grid: tuple, args: tuple, _device_index: Optional[int],
             _stream: Any) -> None:
    collected.append(CollectedLaunch(stage.kernel, grid, args, stage.constexprs))


_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def _check_metadata(metadata: tuple, nseqs: int, nchunks: int, chunk_size: int, total_tokens: int,
                    device: torch.device) -> chunking.SealedMetadata:
    """Check the caller's chunk metadata against ``cu_seqlens`` and seal a private int32 copy of it.

    One device-to-host copy of the four tensors, in their own dtype (int64 values are checked
    before anything narrows them); the kernels index memory with these values. The copy the
    kernels read is built from the values checked here, so no write after the check reaches them.
    """
    host = torch.cat([t.reshape(-1).to(torch.int64) for t in metadata]).cpu().tolist()
    offsets = host[:nseqs + 1]
    rest = host[nseqs + 1:]
    lists = (rest[:nchunks + 1], rest[nchunks + 1:2 * nchunks + 1], rest[2 * nchunks + 1:])
    check_offsets("cu_seqlens", offsets, total_tokens)
    for name, values in zip(METADATA_NAMES[1:], lists):
        check_int32_values(name, values)
    chunking.check_chunk_offsets(offsets, chunk_size, *lists)
    _, views = chunking.packed_int32(lists, device)
    # An inference tensor has no version counter: a refill in place would go unseen, so it is
    # checked on every call (chunking.SealedStore).
    return chunking.SEALED.seal(metadata, chunk_size, total_tokens, views,
                                keep=not any(t.is_inference() for t in metadata))


def _device_guard(device: torch.device):
    """``torch.cuda.device(device)`` for CUDA tensors off the current device (Triton launches on
    the current device); nothing otherwise: entering one costs a request microseconds of host time."""
    if device.type != "cuda" or device.index == torch.cuda.current_device():
        return _NO_GUARD
    return torch.cuda.device(device)


_NO_GUARD = contextlib.nullcontext()
# Triton's interpreter patches triton.language while it runs a kernel: one interpreted call at a time
# (before Triton 3.6 our kernel pairs undo the patches after it: triton_compat.interpreter_patches).
_INTERPRETER_LOCK = threading.Lock()


# A config override (the tuning sweep) changes what the plans hold: plans and kept binaries go.
configs.on_change(_PLANS.clear)
configs.on_change(_LAUNCHER.clear)
