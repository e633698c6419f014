"""A third-party kernel on CPU, as the conformance suite meets vLLM's or mamba_ssm's: interpreted by
Triton, autotuned, calling triton.language's own @jit helpers; whatever the options, and with xdist.

Every inner session is a fresh process: TRITON_INTERPRET must be settled before triton is first
imported, and this process imported it long ago (conftest.py).
"""
import json

import pytest
import triton

from pytest_ssd import triton_compat
from pytest_ssd.interpreter import DotProbe
from pytest_ssd.options import Settings
from pytest_ssd.session import SSDSession

TOY = '''
"""A toy third-party SSD kernel with vLLM's API: the float64 reference, written out through an
autotuned Triton kernel that calls tl.sum (a @jit helper of triton.language). Interpreted on CPU."""
import torch
import triton
import triton.language as tl

from pytest_ssd.layer import make_ssd_inputs
from pytest_ssd.reference import ssd_reference

CONFIGS = [triton.Config({"BLOCK": 64}), triton.Config({"BLOCK": 128}), triton.Config({"BLOCK": 32})]


@triton.autotune(configs=CONFIGS, key=[])
@triton.jit
def _write(src_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    value = tl.load(src_ptr + offs, mask=mask)
    tl.store(out_ptr + offs, tl.sum(value[:, None], axis=1), mask=mask)


def ssd(x, dt, A, B, C, chunk_size, cu_seqlens, cu_chunk_seqlens, last_chunk_indices, seq_idx, out, *, D=None,
        z=None, dt_bias=None, initial_states=None, dt_softplus=False, dt_limit=(0.0, float("inf")),
        state_dtype=None, flip_D=False):
    y, states = ssd_reference(x, dt, A, B, C, cu_seqlens=cu_seqlens, D=-D if flip_D else D, z=z, dt_bias=dt_bias,
                              dt_softplus=dt_softplus, dt_limit=dt_limit, initial_states=initial_states,
                              output_dtype=torch.float32)
    flat = y.reshape(-1)
    with torch.cuda.device(x.device.index):  # as GPU kernels guard their launches (mamba_ssm's do)
        _write[lambda meta: (triton.cdiv(flat.numel(), meta["BLOCK"]),)](flat, out, flat.numel())
    return states.to(state_dtype or x.dtype)


def wrong_sign(*args, **kwargs):
    """y = C h - D x: a real bug, which every dtype the interpreter computes right must catch."""
    return ssd(*args, **kwargs, flip_D=True)


def warmup(layer):
    """Tunes _write for the layer's dtype, so that no test autotunes (--ssd-require-warm)."""
    inputs = make_ssd_inputs(layer, [layer.chunk_size + 3], seed=7)
    ssd(out=torch.empty_like(inputs.x), **inputs.kernel_kwargs(layer))
'''

SUITE = ("-p", "pytest_ssd", "--pyargs", "pytest_ssd.suite", "-p", "no:cacheprovider", "--ssd-device", "cpu",
         "--ssd-kernel", "toy:ssd", "--ssd-warmup", "toy:warmup", "-rs")
CASES = ("-k", "correctness and (varlen_mix or single_token)")
BF16_SKIP = "*Triton *'s interpreter computes bf16 tl.dot wrongly*; run bf16 on a GPU"


@pytest.fixture
def toy(pytester, monkeypatch):
    pytester.makepyfile(toy=TOY)
    monkeypatch.setenv("PYTHONPATH", str(pytester.path), prepend=":")  # the subprocess imports toy
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the plugin must set it, no one else
    return pytester


def _interpreter_records(report) -> list:
    return [w["interpreter"] for w in json.loads(report.read_text())["workers"] if w.get("interpreter")]


@pytest.mark.parametrize("options", [("--ssd-report=r.json",), ("--ssd-report=r.json", "--ssd-require-warm")],
                         ids=["report", "report+require-warm"])
def test_interpreted_autotuned_kernel_passes_whatever_the_options(toy, options):
    # Both options watch test phases with the event recorder, which imports triton: before the fix,
    # before TRITON_INTERPRET was set (InterpreterError: Cannot call @triton.jit'd outside of the
    # scope of a kernel); and the autotuner crashed without a driver (0 active drivers).
    result = toy.runpytest_subprocess(*SUITE, *CASES, "--ssd-warmup", "toy:warmup", "--ssd-dtype", "fp32,fp16,bf16",
                                      *options)
    result.assert_outcomes(passed=4, skipped=2)  # fp32 and fp16 judged; bf16 skipped, never blamed on the kernel
    result.stdout.fnmatch_lines(["*interpreter main: 2 bf16 correctness case(s) skipped: Triton*", BF16_SKIP])
    data = json.loads((toy.path / "r.json").read_text())
    assert data["totals"]["cold_tests_failed"] == 0
    (record,) = _interpreter_records(toy.path / "r.json")
    assert record["bf16_cases_skipped"] == 2 and record["bf16_dot"]["exact"] is False
    assert record["bf16_skip_reason"].endswith("run bf16 on a GPU")


def test_interpreted_kernel_under_xdist(toy):
    result = toy.runpytest_subprocess(*SUITE, *CASES, "-n", "2", "--ssd-dtype", "fp32,bf16", "--ssd-report=r.json")
    result.assert_outcomes(passed=2, skipped=2)
    records = _interpreter_records(toy.path / "r.json")
    assert sum(r["bf16_cases_skipped"] for r in records) == 2, records


def test_a_wrong_interpreted_kernel_still_fails_in_fp32_and_fp16(toy):
    result = toy.runpytest_subprocess(*SUITE, "--ssd-kernel", "toy:wrong_sign", "--ssd-kernel-api", "vllm",
                                      "-k", "correctness and varlen_mix")
    result.assert_outcomes(failed=2, skipped=1)  # the bf16 skip hides nothing the interpreter can judge
    result.stdout.fnmatch_lines(["*SSD kernel disagrees with the reference (float32):*",
                                 "*SSD kernel disagrees with the reference (float16):*", BF16_SKIP])


def test_interpreter_mode_is_settled_before_conftest_files_import_triton(toy):
    toy.makeconftest("""
        import os
        SEEN = os.environ.get("TRITON_INTERPRET")
        import triton  # noqa: F401  (as this repository's own tests/conftest.py does)
    """)
    toy.makepyfile(test_seen="""
        import conftest
        def test_seen():
            assert conftest.SEEN == "1"
    """)
    result = toy.runpytest_subprocess(*SUITE, "-k", "test_seen or (correctness and varlen_mix)", "--ssd-dtype", "fp32",
                                      "test_seen.py")
    result.assert_outcomes(passed=2)  # and the kernel, which calls tl.sum, ran interpreted


def test_triton_interpret_is_set_for_the_session_and_taken_back(toy):
    import os

    toy.makepyfile(test_env="""
        import os
        def test_env():
            assert os.environ["TRITON_INTERPRET"] == "1"
    """)
    result = toy.runpytest("-p", "pytest_ssd", "--ssd-device", "cpu", "--ssd-kernel", "toy:ssd", "--ssd-warmup",
                           "toy:warmup", "test_env.py")
    result.assert_outcomes(passed=1)
    assert "TRITON_INTERPRET" not in os.environ


def _session(kernel: str, **settings) -> SSDSession:
    return SSDSession(Settings(kernel=kernel, device="cpu", **settings), worker="main", gpu=None)


def test_an_exact_interpreter_gets_its_bf16_cases_judged(monkeypatch):
    import torch

    from pytest_ssd import interpreter

    exact = DotProbe("bf16", "9.9", exact=True, max_abs_error=0.0)
    monkeypatch.setattr(interpreter, "probe_dot", lambda dtype: exact)
    session = _session("toy:ssd")
    assert session.interpreter_skip_reason(torch.bfloat16) is None
    assert session.report.interpreter == {"bf16_dot": exact.to_dict(), "bf16_skip_reason": None,
                                          "bf16_cases_skipped": 0}
    assert any("computes bf16 tl.dot exactly" in line for line in _summary(session))


def test_only_interpreted_bf16_cases_are_probed(monkeypatch):
    import torch

    from pytest_ssd import interpreter

    def never(dtype):
        raise AssertionError("probed")

    monkeypatch.setattr(interpreter, "probe_dot", never)
    assert _session("toy:ssd").interpreter_skip_reason(torch.float32) is None
    assert _session("toy:ssd").interpreter_skip_reason(torch.float16) is None
    bundled = SSDSession(Settings(device="cpu"), worker="main", gpu=None)  # works around the bug itself
    assert bundled.interpreter_skip_reason(torch.bfloat16) is None
    compile_only = _session("toy:ssd", compile_only="cuda:90")
    assert compile_only.interpreter_skip_reason(torch.bfloat16) is None


def _summary(session: SSDSession) -> list:
    from pytest_ssd.report import SessionReport

    return SessionReport(seed=0, settings={}, workers=[session.report]).summary_lines()


def test_tunes_interpreted_follows_the_fn_chain():
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    import kernels_for_tests as kt

    configs = [triton.Config({"BLOCK": 32}), triton.Config({"BLOCK": 64})]
    assert triton_compat.tunes_interpreted(triton_compat.autotune(InterpretedFunction(kt.fill), configs, []))
    assert not triton_compat.tunes_interpreted(triton_compat.autotune(JITFunction(kt.fill), configs, []))
    assert not triton_compat.tunes_interpreted(kt.fill)


def test_cpu_device_guards_make_a_cpu_tensors_device_guard_a_no_op():
    import torch

    from pytest_ssd.interpreter import cpu_device_guards

    enter = torch.cuda.device.__enter__
    with cpu_device_guards():
        with torch.cuda.device(torch.zeros(1).device.index):  # index None
            assert torch.zeros(1).device.type == "cpu"
    assert torch.cuda.device.__enter__ is enter


@pytest.mark.gpu
def test_on_a_gpu_the_same_kernels_are_judged_in_every_dtype(toy):
    # Compiled, not interpreted: nothing is skipped, and the wrong kernel fails bf16 too.
    gpu = ("-p", "pytest_ssd", "--pyargs", "pytest_ssd.suite", "-p", "no:cacheprovider", "--ssd-device", "cuda",
           "-k", "correctness and varlen_mix", "--ssd-kernel-api", "vllm", "--ssd-warmup", "toy:warmup")
    right = toy.runpytest_subprocess(*gpu, "--ssd-kernel", "toy:ssd")
    right.assert_outcomes(passed=3)
    wrong = toy.runpytest_subprocess(*gpu, "--ssd-kernel", "toy:wrong_sign")
    wrong.assert_outcomes(failed=3)
    wrong.stdout.fnmatch_lines(["*SSD kernel disagrees with the reference (bfloat16):*"])
