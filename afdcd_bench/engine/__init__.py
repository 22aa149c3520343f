"""Training, evaluation, checkpoints and run records on Accelerate."""
from .evaluate import evaluate
from .trainer import LaunchMismatch, TrainingDiverged, split_batch, train

__all__ = ["LaunchMismatch", "TrainingDiverged", "evaluate", "split_batch", "train"]
