"""Fine-tuning Q-RAG embedders with a supervised warm start and soft Q-learning (docs/method.md §4)."""

from qrag_core.training.config import TrainingConfig
from qrag_core.training.trainer import Trainer, TrainingResult, train

__all__ = ["Trainer", "TrainingConfig", "TrainingResult", "train"]
