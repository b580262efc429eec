"""Third-party trainers with one planted error each, found as "module:Class" like training_plugin.RenamedTorch:
the built-in PyTorch trainer with one field of the step's recipe dropped, as a fork that missed it would.
`effv2 check --train-steps` must fail on them (the recipe is `effv2_train.recipe.Recipe`, which the torch
trainer keeps as `backend.recipe` and reads at every step)."""

import dataclasses

from effv2_adapters.torch.adapter import TorchAdapter


class _TrainerIgnores(TorchAdapter):
    """The torch adapter whose trainer's recipe has `dropped` (Recipe field -> value) in place of the documents'."""

    dropped: dict = {}

    def trainer(self, **options):
        make, procs = super().trainer(**options)

        def make_planted(plan, tensors):
            backend = make(plan, tensors)
            backend.recipe = dataclasses.replace(backend.recipe, **self.dropped)
            return backend

        return make_planted, procs


class TrainerIgnoresClipping(_TrainerIgnores):
    """Never clips: what the torch and JAX trainers' `optimizer_steps` did before the recipe module."""

    name = "torch-trainer-ignores-clipping"
    dropped = {"clip_norm": None}


class TrainerIgnoresLabelSmoothing(_TrainerIgnores):
    """Plain cross-entropy against the (mixed) one-hot targets."""

    name = "torch-trainer-ignores-label-smoothing"
    dropped = {"label_smoothing": 0.0}
