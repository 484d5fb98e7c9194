"""Train sparse autoencoders on a model's residual stream, evaluate them, save them in SAE-Lens format.

Our own small trainer (TopK with the AuxK dead-feature loss of Gao et al. 2024, the standard ReLU SAE
with an L1 penalty weighted by decoder norms, and the gated SAE of Rajamanoharan et al. 2024) on
in-memory activations: it runs on any device and is several times faster than SAE-Lens's runner on CPU.
For runs larger than memory, `engine="saelens"` runs SAE-Lens's own training runner on the same model and
corpus, streaming activations from the model as it trains. Either result is written as an SAE-Lens folder
(`cfg.json` + `sae_weights.safetensors`) that `sae_lens.SAE.load_from_disk` and
`interp.dictionaries.from_saelens_folder` both load, with the same training report beside it.

Modules: `harvest` (activations of a corpus), `trainer` (the SAE and its training loop), `gated` (the
gated SAE and its auxiliary loss), `saving` (SAE-Lens folders), `evaluation` (variance explained, L0,
spliced CE), `saelens_engine` (SAE-Lens's runner on our model and corpus), `pipeline` (all of it per layer,
with either engine).
"""

from interp.sae_training.evaluation import SAEEvaluation, evaluate_sae, reconstruction_stats, spliced_losses
from interp.sae_training.gated import GatedSparseAutoencoder
from interp.sae_training.harvest import Harvest, harvest_activations, tokenize_corpus
from interp.sae_training.pipeline import ENGINES, check_engine, train_saes_for_model
from interp.sae_training.saelens_engine import SAELensRun, pack_rows, save_saelens_sae, train_sae_with_saelens
from interp.sae_training.saving import REPORT_FILE, SAVED_BEFORE_MARKERS, check_sae_targets, save_sae
from interp.sae_training.trainer import SAETrainingConfig, SparseAutoencoder, TrainingLog, train_sae

__all__ = [
    "ENGINES",
    "REPORT_FILE",
    "SAVED_BEFORE_MARKERS",
    "GatedSparseAutoencoder",
    "Harvest",
    "SAEEvaluation",
    "SAELensRun",
    "SAETrainingConfig",
    "SparseAutoencoder",
    "TrainingLog",
    "check_engine",
    "check_sae_targets",
    "evaluate_sae",
    "harvest_activations",
    "pack_rows",
    "reconstruction_stats",
    "save_sae",
    "save_saelens_sae",
    "spliced_losses",
    "tokenize_corpus",
    "train_sae",
    "train_sae_with_saelens",
    "train_saes_for_model",
]
