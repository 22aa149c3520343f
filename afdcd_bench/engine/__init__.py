"""Training, evaluation, checkpoints and run records on Accelerate."""
from .evaluate import evaluate
from .trainer import LaunchMismatch, TrainHooks, TrainingDiverged, split_batch, train

__all__ = ["LaunchMismatch", "TrainHooks", "TrainingDiverged", "evaluate", "split_batch", "train"]
