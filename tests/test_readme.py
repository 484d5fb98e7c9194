"""The README's quick start runs as written (on the embedded model)."""

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def quick_start_code() -> str:
    """The Python block under the README's "Quick start" heading."""
    return re.search(r"## Quick start.*?```python\n(.*?)```", README.read_text(), re.S).group(1)


@pytest.mark.integration
@pytest.mark.generation
def test_quick_start_runs(smollm, tmp_path, monkeypatch, capsys):
    code = quick_start_code()
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README quick start", "exec"), namespace)
    assert (tmp_path / "results" / "my_direction" / "direction.safetensors").exists()
    assert namespace["logits"].shape[-1] == smollm.cfg.d_vocab
    printed = capsys.readouterr().out
    assert printed.count("[") >= 2  # both generations printed


@pytest.mark.integration
def test_embedded_model_batched_equals_single(smollm):
    from interp.activations import LastK, collect_residuals
    from interp.chat import format_chats

    prompts = format_chats(smollm, ["Hi", "What is the capital of France? Answer briefly.", "Tell me a joke."])
    batched = collect_residuals(smollm, prompts, [5, 20], LastK(2), batch_size=3, progress=False)
    single = torch.cat([collect_residuals(smollm, [p], [5, 20], LastK(2), progress=False) for p in prompts])
    assert torch.allclose(batched, single, atol=1e-4)
