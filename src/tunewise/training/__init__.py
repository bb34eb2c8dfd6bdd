"""Fine-tuning: the recipe and what it is made of, one job a module (each imports only those below it).

    recipe          train(): the recipe read top to bottom, then its loop and validation
    estimate        dry_run(): tokens, steps, memory, time and dollars of a run, before it runs
    inference       predictions of a trained model (public: the fine-tuned candidates and serving)
    checkpoint      resumable checkpoints and the adapter folder
    early_stopping  the best validation, early stopping, the overfitting watch, under-training
    build           the model (base weights, LoRA or encoder + head), optimiser and scheduler
    plots           the training curves' picture
    modules         the torch modules (losses, encoder classifier, FrozenPrefix): torch at the top
    data            frames checked, tokenised, planned and batched (steps 1-2)
    runtime         device, bf16, threads, memory, heap, rank: how a run computes here
    plan            every size of a run, from the settings and the data
    settings        per-method defaults, the budget's rules, TrainError

Importing this package imports no torch: the modules that need it import it on use.
"""

from tunewise.training.data import encode_classification
from tunewise.training.estimate import dry_run
from tunewise.training.inference import classifier_probabilities, generate_texts, load_trained
from tunewise.training.recipe import TrainResult, train
from tunewise.training.settings import TrainError

__all__ = [
    "TrainError",
    "TrainResult",
    "classifier_probabilities",
    "dry_run",
    "encode_classification",
    "generate_texts",
    "load_trained",
    "train",
]
