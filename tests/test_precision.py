"""``train.precision: auto`` per device, with faked CPU flags and a faked CUDA (no GPU needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bonefrac import precision as P
from bonefrac.config import load_config
from bonefrac.errors import ConfigError

AMX = frozenset({"fpu", "avx512f", "amx_bf16", "amx_tile"})
AVX512_BF16 = frozenset({"fpu", "avx512f", "avx512_bf16"})
PLAIN = frozenset({"fpu", "sse2", "avx2"})


@pytest.fixture()
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def fake_cuda(monkeypatch: pytest.MonkeyPatch, bf16: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nmodel name\t: Some Xeon\nflags\t\t: fpu sse2 avx512f amx_bf16 amx_tile\n"
        "\nprocessor\t: 1\nflags\t\t: fpu\n"
    )
    assert P.cpu_flags(info) == {"fpu", "sse2", "avx512f", "amx_bf16", "amx_tile"}
    assert P.cpu_flags(tmp_path / "absent") == frozenset()  # not Linux: no flags, no error
    assert P.cpu_bf16_flags(AMX) == ["amx_bf16"]
    assert P.cpu_bf16_flags(AVX512_BF16) == ["avx512_bf16"]
    assert P.cpu_bf16_flags(PLAIN) == []


@pytest.mark.usefixtures("no_cuda")
@pytest.mark.parametrize("flags", [AMX, AVX512_BF16, PLAIN])
def test_auto_on_a_cpu_is_fp32_until_bf16_is_measured_faster(flags: frozenset[str]) -> None:
    assert not P.CPU_BF16_TRAINING and not P.CPU_BF16_INFERENCE  # measured (module docstring)
    assert P.auto_precision("auto", flags) == "32-true"
    assert P.auto_precision("cpu", flags) == "32-true"
    assert P.inference_dtype("cpu", flags) == torch.float32


@pytest.mark.usefixtures("no_cuda")
def test_a_measured_cpu_win_switches_auto_to_bf16_only_where_the_flags_are(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(P, "CPU_BF16_TRAINING", True)
    assert P.auto_precision("cpu", AMX) == "bf16-mixed"
    assert P.auto_precision("auto", AVX512_BF16) == "bf16-mixed"
    assert P.auto_precision("cpu", PLAIN) == "32-true"
    assert P.inference_dtype("cpu", AMX) == torch.float32  # inference decided on its own
    monkeypatch.setattr(P, "CPU_BF16_INFERENCE", True)
    assert P.inference_dtype("cpu", AMX) == torch.bfloat16
    assert P.inference_dtype("cpu", PLAIN) == torch.float32
    with P.inference_autocast("cpu", AMX):
        out = torch.nn.Linear(4, 1)(torch.randn(2, 4))
    assert out.dtype == torch.bfloat16


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bf16-mixed"), (False, "16-mixed")])
def test_auto_on_cuda(monkeypatch: pytest.MonkeyPatch, bf16: bool, expected: str) -> None:
    fake_cuda(monkeypatch, bf16)
    assert P.auto_precision("auto", PLAIN) == expected
    assert P.auto_precision("gpu", PLAIN) == expected
    assert P.auto_precision("cpu", PLAIN) == "32-true"  # the user asked for the CPU
    assert P.inference_dtype("cuda") == (torch.bfloat16 if bf16 else torch.float16)
    assert P.inference_dtype("cpu", PLAIN) == torch.float32


def test_fp32_inference_context_is_a_no_op() -> None:
    with P.inference_autocast("cpu", PLAIN):
        out = torch.nn.Linear(4, 1)(torch.randn(2, 4))
    assert out.dtype == torch.float32


def test_config_default_is_auto_and_explicit_values_win(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cuda(monkeypatch, bf16=True)
    cfg = load_config(None)
    assert cfg.train.precision == "auto"
    assert P.resolve_precision(cfg) == "bf16-mixed"
    assert load_config(None, ["train.precision=null"]).train.precision == "auto"
    for value in ("32-true", "16-mixed", "bf16", "32"):
        cfg = load_config(None, [f"train.precision={value}"])
        assert P.resolve_precision(cfg) == value
    assert P.resolve_precision(load_config(None, ["train.accelerator=cpu"])) == "32-true"


def test_config_rejects_an_unknown_precision() -> None:
    with pytest.raises(ConfigError, match="precision"):
        load_config(None, ["train.precision=fp8"])


def test_fit_uses_the_precision_module() -> None:
    from bonefrac.training import fit

    assert fit.resolve_precision is P.resolve_precision
