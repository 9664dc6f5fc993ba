"""A tiny NextFlow world shared by the nextflow tests: a BPE text tokenizer, an untrained dual-codebook
tokenizer (8x8 images, downsample 2, 3 scales), the unified vocabulary and a 2-layer model."""

import pytest
import torch

from nxcore.schedule import Schedule
from nxcore.tokenizer import BPETokenizer, SpecialTokens, Vocabulary
from nxcore.tokenizer.dual import dual_tiny
from nxrecipes.data.shapeworld.corpus import text_corpus
from nxrecipes.nextflow import nextflow_tiny

SPECIALS = SpecialTokens.nextflow().replace(eos="<eos>")
SCHEDULE = Schedule(((1, 1), (2, 2), (4, 4)))


class World:
    def __init__(self) -> None:
        torch.manual_seed(0)
        self.text = BPETokenizer.train(text_corpus(20), vocab_size=300, special_tokens=SPECIALS)
        self.image = dual_tiny().build().eval()
        self.vocab = Vocabulary.from_tokenizer(self.text, self.image.codebook_size, SPECIALS)
        self.schedule = SCHEDULE

    def config(self, **changes):
        fields = {"num_layers": 2}
        fields.update(changes)
        return nextflow_tiny(self.vocab, self.image.config.code_dim, **fields)

    def model(self, **changes):
        torch.manual_seed(1)
        model = self.config(**changes).build().eval()
        model.init_code_embeddings(self.image, generator=torch.Generator().manual_seed(0))
        return model

    def extended_model(self):
        """A model with the extras beyond the paper: grid positions, and a two-block ``GridRefiner``
        whose weights are moved off their identity init."""
        model = self.model(refiner_blocks=2, grid_positions=True)
        g = torch.Generator().manual_seed(2)
        with torch.no_grad():
            for p in model.refiner.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
        return model

    def codes(self, n: int, seed: int = 0):
        images = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1
        return self.image.encode(images, self.schedule)

    def ids(self, text: str) -> list[int]:
        return self.text.encode(text)


@pytest.fixture(scope="session")
def world() -> World:
    return World()
