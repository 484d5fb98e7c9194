"""Batched generation with interventions active: greedy or sampled, left-padded, with a KV cache.

`generate` is the general path (a bridge runs its plain HF clone when every hook sits on a residual
site; a HookedTransformer decodes row by row with our own loop). `generate_greedy` runs the prompts'
shared prefix once per chunk (`generate_greedy_scored` also returns the prompts' next-token logits); `generate_with_row_biases` gives every row its own added vector, so a
grid of vectors × scales × prompts is one batched call; `generate_with_row_patches` gives every row of
one prompt its own replacement for the residual at chosen prompt positions (Patchscopes, self-explanation).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from interp._checks import finite_number, float_tensor, whole_number
from interp._timing import progress_bar
from interp.chat import TokenBatch, prompt_list, tokenize, tokenizer_of
from interp.hooked import HookedModel, HookList, cache_kwargs, d_model, is_bridge, model_device, plain_model
from interp.runner.prefix import fill_prompt_cache, last_logits, prefix_cache, shared_prefix_length
from interp.steering import Intervention, StepState, apply_all


@torch.no_grad()
def generate(
    model: HookedModel,
    prompts: str | Sequence[str],
    *,
    interventions: Sequence[Intervention] = (),
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    batch_size: int = 16,
    use_cache: bool = True,
    stop_at_eos: bool = True,
    progress: bool = True,
    fast: bool = True,
) -> list[str]:
    """Completions (new text only) of already-formatted `prompts`, with `interventions` active.

    Batched and left-padded; greedy unless `do_sample`; a `seed` makes sampling reproducible.
    `fast=True` runs a bridge's plain HF module tree (same weights) when every hook sits on a
    residual site (resid_pre/attn_out/mlp_out/resid_post), avoiding the bridge's per-module overhead;
    other hooks run through the bridge itself.
    """
    prompts = prompt_list(prompts)
    whole_number(max_new_tokens, "max_new_tokens", minimum=1)
    whole_number(batch_size, "batch_size", minimum=1)
    if do_sample:
        if finite_number(temperature, "temperature") <= 0:
            raise ValueError(f"temperature: expected a number > 0, got {temperature!r}")
        if not 0 < finite_number(top_p, "top_p") <= 1:
            raise ValueError(f"top_p: expected a number in (0, 1], got {top_p!r}")
    tokenizer = model.tokenizer
    completions: list[str] = []
    starts = range(0, len(prompts), batch_size)
    with torch.random.fork_rng(devices=[] if model_device(model).type == "cpu" else [model_device(model)]):
        if seed is not None:
            torch.manual_seed(seed)
        for start in progress_bar(starts, desc="generate (batches)", progress=progress and len(starts) > 1):
            batch = tokenize(model, prompts[start : start + batch_size], device=model_device(model))
            with apply_all(model, *interventions, plain=fast) as state, _token_bar(state, batch, max_new_tokens, progress):
                state.prompt_length = batch.input_ids.shape[1]
                new_tokens = _generate_batch(
                    model, batch, state, max_new_tokens, do_sample, temperature, top_p, use_cache, stop_at_eos
                )
            completions.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    return completions


@contextmanager
def _token_bar(state: StepState, batch: TokenBatch, max_new_tokens: int, progress: bool) -> Iterator[None]:
    """A bar of decoding steps (each forward of the runner gives every row one token), shown on a batch that runs
    past a couple of seconds."""
    if not progress:
        yield
        return
    n_rows = batch.input_ids.shape[0]
    passes = 1 if hasattr(state.runner, "generation_config") else n_rows  # HF decodes the batch; ours row by row
    bar = progress_bar(desc=f"generate ({n_rows} × ≤{max_new_tokens} tokens)", total=passes * max_new_tokens, unit="step")

    def step(*_: Any) -> None:  # returns None: the forward's output is untouched
        bar.update(1)

    handle = state.runner.register_forward_hook(step)
    try:
        yield
    finally:
        handle.remove()
        bar.close()


def _generate_batch(
    model: HookedModel,
    batch: Any,
    state: StepState,
    max_new_tokens: int,
    do_sample: bool,
    temperature: float,
    top_p: float,
    use_cache: bool,
    stop_at_eos: bool,
) -> Tensor:
    tokenizer = model.tokenizer
    if is_bridge(model):
        sampling = {"temperature": temperature, "top_p": top_p} if do_sample else {"temperature": None, "top_p": None, "top_k": None}
        output = state.runner.generate(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            max_new_tokens=max_new_tokens,
            min_new_tokens=0 if stop_at_eos else max_new_tokens,
            do_sample=do_sample,
            use_cache=use_cache,
            pad_token_id=tokenizer.pad_token_id,
            **sampling,
        )
        return output[:, batch.input_ids.shape[1] :]
    # HookedTransformer: one prompt at a time (its forward takes no position ids for left padding),
    # with our own loop: its `generate` calls `forward` directly, which bypasses the pre-hook that
    # tells steering hooks the KV-cache offset.
    rows = []
    for row in range(batch.input_ids.shape[0]):
        tokens = batch.input_ids[row : row + 1, batch.attention_mask[row].bool()]
        state.prompt_length = tokens.shape[1]
        rows.append(_hooked_transformer_decode(model, tokens, max_new_tokens, do_sample, temperature, top_p, use_cache, stop_at_eos))
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=tokenizer.pad_token_id)


def _hooked_transformer_decode(
    model: HookedModel, tokens: Tensor, max_new_tokens: int, do_sample: bool, temperature: float, top_p: float,
    use_cache: bool, stop_at_eos: bool,
) -> Tensor:
    from transformer_lens import TransformerLensKeyValueCache
    from transformer_lens.utilities.logits_utils import sample_logits

    cache = TransformerLensKeyValueCache.init_cache(model.cfg, tokens.device, 1) if use_cache else None
    eos = model.tokenizer.eos_token_id
    new_tokens: list[Tensor] = []
    step_input = tokens
    for _ in range(max_new_tokens):
        logits = model(step_input, past_kv_cache=cache) if use_cache else model(tokens)
        last = logits[:, -1]
        next_token = sample_logits(last, temperature=temperature, top_p=top_p) if do_sample else last.argmax(-1)
        new_tokens.append(next_token)
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)
        step_input = next_token[:, None]
        if stop_at_eos and int(next_token) == eos:
            break
    return torch.cat(new_tokens)



@torch.no_grad()
def generate_greedy(
    model: HookedModel,
    prompts: Sequence[str],
    interventions: Sequence[Intervention] = (),
    *,
    max_new_tokens: int = 24,
    batch_size: int = 32,
    progress: bool = False,
) -> list[str]:
    """Greedy completions like `generate`, with the prompts' shared prefix run once.

    Prompts are length-sorted into chunks of `batch_size` rows, decoded together. Each chunk's shared prefix
    goes into a KV cache; the prompts' own tokens run in groups of similar length (`fill_prompt_cache`), not
    padded to the chunk's longest prompt; HF `generate` continues from the last prompt token (position ids
    follow the attention mask, so the padding between prefix and suffix is invisible). So a large
    `batch_size` costs no padding, and decodes faster on a CPU (each step reads the weights once per chunk).
    Falls back to `generate` where the plain HF tree cannot run the hooks.
    """
    return _greedy(model, prompts, interventions, max_new_tokens, batch_size, progress, keep_logits=False)[0]


@torch.no_grad()
def generate_greedy_scored(
    model: HookedModel,
    prompts: Sequence[str],
    interventions: Sequence[Intervention] = (),
    *,
    max_new_tokens: int = 24,
    batch_size: int = 32,
    progress: bool = False,
) -> tuple[list[str], Float[Tensor, "n d_vocab"]]:
    """`generate_greedy`'s completions and each prompt's next-token logits (what `last_logits` gives), read
    off the generation's own prompt pass instead of a second forward."""
    texts, logits = _greedy(model, prompts, interventions, max_new_tokens, batch_size, progress, keep_logits=True)
    if logits is None:  # the fallback path (no plain HF tree): one more pass
        logits = last_logits(model, prompts, interventions, batch_size=batch_size)[0]
    return texts, logits


def _greedy(
    model: HookedModel, prompts: Sequence[str], interventions: Sequence[Intervention], max_new_tokens: int,
    batch_size: int, progress: bool, keep_logits: bool,
) -> tuple[list[str], Tensor | None]:
    prompts = prompt_list(prompts)
    batch = tokenize(model, prompts)
    order = torch.argsort(batch.lengths.cpu(), stable=True)  # on CPU: it also reorders CPU results
    device_order = order.to(batch.input_ids.device)
    sorted_batch = TokenBatch(batch.input_ids[device_order], batch.attention_mask[device_order])
    tokenizer = tokenizer_of(model)
    texts: list[str] = []
    first_logits: list[Tensor] = []
    with apply_all(model, *interventions, plain=True) as state:
        plain = plain_model(model)
        if plain is None or state.runner is not plain:
            texts = generate(model, prompts, interventions=interventions, max_new_tokens=max_new_tokens,
                             batch_size=batch_size, progress=progress)
            return texts, None
        # The head's first call in each `generate` is the prompt pass: its last position is the prompt's next token.
        capture = _FirstCall() if keep_logits else None
        head = plain.get_output_embeddings()
        handle = head.register_forward_hook(capture) if capture is not None else None
        try:
            for start in progress_bar(range(0, len(prompts), batch_size), desc="generate (batches)", progress=progress):
                chunk = sorted_batch[start : start + batch_size].to(model_device(model))
                prefix = shared_prefix_length(chunk)
                # Prefix + padded suffixes are as wide as the chunk: set before the prefix pass, which steering reads
                state.prompt_length = chunk.input_ids.shape[1]
                if prefix > 0:
                    cache, suffix_ids, attention, positions = prefix_cache(model, state.runner, chunk, prefix)
                    first = chunk.input_ids.shape[1] - int(chunk.lengths[0])
                    prefix_ids = chunk.input_ids[:1, first : first + prefix].expand(suffix_ids.shape[0], -1)
                    input_ids = torch.cat([prefix_ids, suffix_ids], 1)
                    # The prompts' own tokens in groups of similar length, not padded to the chunk's longest
                    cache = fill_prompt_cache(state.runner, cache, suffix_ids, attention, positions) or cache
                else:
                    cache, input_ids, attention = None, chunk.input_ids, chunk.attention_mask
                if capture is not None:
                    capture.armed = True
                output = state.runner.generate(
                    input_ids=input_ids, attention_mask=attention, **cache_kwargs(state.runner, cache),
                    max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
                    pad_token_id=tokenizer.pad_token_id,
                )
                texts.extend(tokenizer.batch_decode(output[:, input_ids.shape[1] :], skip_special_tokens=True))
                if capture is not None:
                    first_logits.append(capture.value)
        finally:
            if handle is not None:
                handle.remove()
    inverse = torch.argsort(order)
    logits = torch.cat(first_logits)[inverse] if keep_logits else None
    return [texts[i] for i in inverse.tolist()], logits


class _FirstCall:
    """A forward hook keeping the last-position output of the first call after `armed` is set."""

    def __init__(self) -> None:
        self.armed, self.value = False, None

    def __call__(self, module: torch.nn.Module, args: tuple, output: Tensor) -> None:
        if self.armed:  # on the CPU, as `last_logits` returns them
            self.value, self.armed = output[:, -1].float().cpu(), False


def _row_spans(model: HookedModel, rows: Tensor, batch_rows: int) -> list[tuple[int, int]]:
    """Row ranges generated together: `batch_rows` at a time on a bridge; on a HookedTransformer, which
    `generate` decodes one row at a time with one hook for all, each run of consecutive equal rows."""
    n_rows = rows.shape[0]
    if is_bridge(model):
        return [(start, min(start + batch_rows, n_rows)) for start in range(0, n_rows, batch_rows)]
    same = (rows[1:] == rows[:-1]).all(-1).tolist()
    cuts = [0] + [row + 1 for row, equal in enumerate(same) if not equal] + [n_rows]
    return list(itertools.pairwise(cuts))


def generate_with_row_biases(
    model: HookedModel,
    prompts: Sequence[str],
    hook: str,
    biases: Float[Tensor, "n_rows d_model"],
    *,
    batch_rows: int = 32,
    positions: Literal["all", "new"] = "all",
    progress: bool = True,
    desc: str = "steered generations",
    **generate_kwargs: Any,
) -> list[str]:
    """Completions of `prompts[i]` with `biases[i]` added at `hook`, row by row: at every position, or
    (`positions="new"`, as `Steer`) from the last prompt token on.

    A grid of vectors × scales × prompts becomes one list of rows generated together in batches of
    `batch_rows` (a per-row hook), instead of one `generate` call per vector and scale.
    `generate_kwargs` go to `generate` (max_new_tokens, do_sample, temperature, seed, ...). A
    HookedTransformer, which `generate` decodes one row at a time, gets one call per run of
    consecutive rows with the same bias.
    """
    prompts = list(prompts)
    if biases.ndim != 2 or biases.shape[0] != len(prompts):
        raise ValueError(f"biases: expected one row per prompt ({len(prompts)}), got shape {tuple(biases.shape)}")
    whole_number(batch_rows, "batch_rows", minimum=1)
    if positions not in ("all", "new"):
        raise ValueError(f"positions: expected 'all' or 'new', got {positions!r}")
    biases = biases.to(model_device(model))
    spans = _row_spans(model, biases, batch_rows)
    texts: list[str] = []
    for start, stop in progress_bar(spans, desc=desc, progress=progress):
        rows = biases[start:stop] if is_bridge(model) else biases[start : start + 1]
        intervention = _RowBias(hook, rows, only_new=positions == "new")
        texts += generate(model, prompts[start:stop], interventions=[intervention], batch_size=stop - start,
                          progress=progress, **generate_kwargs)
    return texts


@dataclass(frozen=True)
class _RowBias:
    """Row i of the batch gets `rows[i]` added at `hook_point`: everywhere, or from the last prompt token on."""

    hook_point: str
    rows: Float[Tensor, "n_rows d_model"]
    only_new: bool

    def hooks(self, model: HookedModel, state: StepState | None = None) -> HookList:
        state = state if state is not None else StepState()

        def add(activation: Tensor, hook: Any) -> Tensor:
            rows = self.rows[:, None, :].to(activation.device, activation.dtype)
            if not self.only_new:
                return activation + rows
            first_steered = state.prompt_length - 1 - state.offset  # as Steer(positions="new")
            steered = torch.arange(activation.shape[1], device=activation.device) >= first_steered
            return activation + steered[None, :, None].to(activation.dtype) * rows

        return [(self.hook_point, add)]


def _prompt_positions(position: int | Sequence[int], length: int, argument: str = "position") -> list[int]:
    """`position` (one index or several, negative ones counting from the end) as sorted distinct indices
    into a prompt of `length` tokens; anything else is an error naming `argument`."""
    listed = [position] if isinstance(position, int) and not isinstance(position, bool) else position
    try:
        listed = list(listed)
    except TypeError:
        raise TypeError(f"{argument}: expected a token index or a list of them, got {type(position).__name__}") from None
    if not listed:
        raise ValueError(f"{argument}: expected at least one token index")
    for index in listed:
        if isinstance(index, bool) or not isinstance(index, int) or not -length <= index < length:
            raise ValueError(
                f"{argument}: expected token indices in [-{length}, {length}) (the prompt has {length} tokens), "
                f"got {index!r}"
            )
    return sorted({index % length for index in listed})


@dataclass(frozen=True)
class _RowPatch:
    """Row i's residual at `hook_point`, prompt columns `positions`, replaced by `rows[i]`.

    Columns are absolute (prompt) positions: a KV-cached decoding step starts at `state.offset` and,
    past the prompt, never covers them again; an uncached step re-runs the prompt and is patched anew.
    """

    hook_point: str
    positions: tuple[int, ...]
    rows: Tensor

    def hooks(self, model: HookedModel, state: StepState) -> HookList:
        positions = torch.tensor(self.positions, device=self.rows.device)

        def replace(activation: Tensor, hook: Any) -> Tensor | None:
            columns = positions.to(activation.device) - state.offset
            columns = columns[(columns >= 0) & (columns < activation.shape[1])]
            if columns.numel() == 0:
                return None
            patched = activation.clone()  # the hook's input may be needed elsewhere (autograd, other hooks)
            patched[:, columns] = self.rows[:, None, :].to(activation.device, activation.dtype).expand(-1, columns.numel(), -1)
            return patched

        return [(self.hook_point, replace)]


def generate_with_row_patches(
    model: HookedModel,
    prompt: str,
    hook: str,
    position: int | Sequence[int],
    vectors: Float[Tensor, "n_rows d_model"],
    *,
    batch_rows: int = 32,
    progress: bool = True,
    desc: str = "patched generations",
    **generate_kwargs: Any,
) -> list[str]:
    """Completions of one formatted `prompt`, row i with the activation at `hook`, token `position`
    (an index into the prompt's tokens, or several), replaced by `vectors[i]`.

    The replacement acts on the prompt's own positions: with a KV cache (the default) decoding steps
    never see them again; with `use_cache=False` every step re-runs the prompt with the same
    replacement, so both give the same completions. Rows are generated `batch_rows` at a time through
    `generate` (a bridge's plain HF tree when `hook` is a residual site); a HookedTransformer, which
    `generate` decodes one row at a time, gets one call per run of consecutive equal rows.
    `generate_kwargs` go to `generate` (max_new_tokens, use_cache, do_sample, seed, ...).
    """
    if not isinstance(prompt, str) or not prompt:
        raise ValueError(f"prompt: expected one non-empty formatted prompt (a string), got {type(prompt).__name__}")
    if not isinstance(hook, str) or not hook:
        raise ValueError(f"hook: expected a hook point name, got {hook!r}")
    float_tensor(vectors, "vectors")
    width = d_model(model)
    if vectors.ndim != 2 or vectors.shape[0] == 0 or vectors.shape[1] != width:
        raise ValueError(f"vectors: expected shape [n_rows >= 1, d_model={width}], got {tuple(vectors.shape)}")
    whole_number(batch_rows, "batch_rows", minimum=1)
    positions = tuple(_prompt_positions(position, tokenize(model, prompt).input_ids.shape[1]))
    vectors = vectors.to(model_device(model))
    spans = _row_spans(model, vectors, batch_rows)
    texts: list[str] = []
    for start, stop in progress_bar(spans, desc=desc, progress=progress):
        rows = vectors[start:stop] if is_bridge(model) else vectors[start : start + 1]
        patch = _RowPatch(hook, positions, rows)
        texts += generate(model, [prompt] * (stop - start), interventions=[patch], batch_size=stop - start,
                          progress=progress, **generate_kwargs)
    return texts
