"""Training: ``fit``, optimizers by name, checkpoints (and, in fastae.train.plots, plots)."""

from fastae.train.checkpoint import load_model, resume_checkpoint, save_checkpoint
from fastae.train.fit import OPTIMIZERS, evaluate, fit, make_optimizer

__all__ = ["OPTIMIZERS", "evaluate", "fit", "load_model", "make_optimizer", "resume_checkpoint", "save_checkpoint"]
