"""Random streams of a method's own (dropout masks, Gumbel noise), seeded from the run's seed.

torch's global generator is also drawn by whatever else runs in the process (the other members of
a fused group build their modules from it), so a method that drew its noise there would train
differently fused than alone. Each `NoiseSource` is a generator of its own, on the device of the
tensors it draws for; `seed_noise` seeds every source of a model from the run's seed.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class NoiseSource(nn.Module):
    """A seeded random stream; `generator(device)` is created on first use on that device."""

    def __init__(self) -> None:
        super().__init__()
        self.seed = 0
        self._generator: torch.Generator | None = None

    def reseed(self, seed: int) -> None:
        self.seed, self._generator = seed, None

    def generator(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
        return self._generator


class SeededDropout(nn.Module):
    """`nn.Dropout` drawing its masks from a `NoiseSource` of its own."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.noise = NoiseSource()

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.empty_like(x).bernoulli_(1.0 - self.p, generator=self.noise.generator(x.device))
        return x * keep / (1.0 - self.p)


def seed_noise(module: nn.Module, seed: int) -> None:
    """Seed every NoiseSource under `module` from the run's `seed` (distinct streams, in module order)."""
    sources = [m for m in module.modules() if isinstance(m, NoiseSource)]
    for index, source in enumerate(sources):
        source.reseed((seed * 1_000_003 + index) % (2**63))
