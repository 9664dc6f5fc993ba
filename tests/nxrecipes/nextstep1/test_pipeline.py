"""NextStep1Pipeline: text-to-image and editing end to end on a tiny model and autoencoder, non-square
sizes, images per caption, seeds, the posterior-mean source, the loaders it delegates to, and errors."""

import sys
import types

import pytest
import torch
from PIL import Image

from nxcore.tokenizer import BPETokenizer, SpecialTokens
from nxcore.tokenizer.autoencoder import autoencoder_tiny
from nxrecipes.nextstep1 import FlowHeadConfig, nextstep1_tiny
from nxrecipes.nextstep1.generate import ImageSampling
from nxrecipes.nextstep1.pipeline import NextStep1Pipeline
from nxrecipes.nextstep1.prompt import model_special_ids

CORPUS = ["a red circle above a blue square", "two green triangles", "make the circle blue"] * 3
FAST = ImageSampling(num_sampling_steps=2)


def parts():
    """A tiny model, its BPE and a random autoencoder with 64-wide tokens (downsample 4)."""
    torch.manual_seed(0)
    tok = BPETokenizer.train(CORPUS, 300, special_tokens=SpecialTokens.nextstep1(), min_frequency=1)
    head = FlowHeadConfig(cond_dim=128, width=32, depth=1, freq_dim=32)
    model = nextstep1_tiny(num_layers=2, vocab_size=tok.vocab_size, head=head, **model_special_ids(tok)).build()
    with torch.no_grad():
        for p in model.image_head.parameters():
            p.copy_(0.2 * torch.randn(p.shape))
    return model, tok, autoencoder_tiny(z_channels=16).build()


@pytest.fixture(scope="module")
def pipeline():
    return NextStep1Pipeline(*parts())


def pictures(n, size=(8, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [Image.fromarray((torch.rand(*size, 3, generator=g) * 255).byte().numpy()) for _ in range(n)]


def test_text_to_image_shapes_range_and_seeds(pipeline):
    images = pipeline.text_to_image(["a red circle", "two green triangles"], hw=(8, 12), num_images_per_caption=2,
                                    sampling=ImageSampling(cfg=2.0, num_sampling_steps=2), progress=False)
    assert images.shape == (4, 3, 8, 12) and images.dtype == torch.float32
    assert 0 <= images.min() and images.max() <= 1
    again = pipeline.text_to_image(["a red circle"], hw=(8, 12), sampling=FAST, progress=False)
    same = pipeline.text_to_image(["a red circle"], hw=(8, 12), sampling=FAST, progress=False)
    other = pipeline.text_to_image(["a red circle"], hw=(8, 12), sampling=FAST, seed=1, progress=False)
    torch.testing.assert_close(again, same, rtol=0, atol=0)
    assert (again - other).abs().max() > 1e-3
    assert pipeline.grid((8, 12)) == (2, 3) and pipeline.downsample == 4


def test_edit_with_image_guidance_and_the_posterior_mean_source(pipeline):
    sources = pictures(2)
    edited = pipeline.edit(sources, ["make the circle blue", "<image> blue"], negative_prompt="copy",
                           sampling=ImageSampling(cfg=3.0, cfg_img=2.0, num_sampling_steps=2), progress=False)
    assert edited.shape == (2, 3, 8, 8) and 0 <= edited.min() and edited.max() <= 1
    wide = pipeline.edit(sources[:1], ["make it wide"], hw=(8, 16), sampling=FAST, progress=False)
    assert wide.shape == (1, 3, 8, 16)
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    torch.testing.assert_close(pipeline.encode(x), pipeline.image_tokenizer.encode(x), rtol=0, atol=0)
    assert pipeline.decode(pipeline.encode(x)).shape == (2, 3, 8, 8)


def test_loaders_delegate_to_the_run_and_official_readers(monkeypatch, tmp_path):
    model, tok, ae = parts()
    import nxcore.tokenizer.autoencoder as autoencoder
    import nxrecipes.nextstep1.official as official

    run = types.SimpleNamespace(model=model, text_tokenizer=tok, image_tokenizer=ae)
    train = types.ModuleType("nxrecipes.nextstep1.train")
    train.load_run = lambda run_dir: run if run_dir == tmp_path else None
    monkeypatch.setitem(sys.modules, "nxrecipes.nextstep1.train", train)
    assert NextStep1Pipeline.from_run(tmp_path).model is model
    seen = {}

    def load_official(model_dir, *, dtype, device):
        seen.update(model_dir=model_dir, dtype=dtype, device=device)
        return types.SimpleNamespace(model=model, text_tokenizer=tok)

    monkeypatch.setattr(official, "load_official", load_official)
    monkeypatch.setattr(autoencoder, "from_official", lambda vae_dir, *, device, dtype: ae)
    loaded = NextStep1Pipeline.from_official("M", "V", dtype=torch.float32, device="cpu")
    assert loaded.image_tokenizer is ae and seen == {"model_dir": "M", "dtype": torch.float32, "device": "cpu"}


def test_errors(pipeline):
    model, tok, ae = parts()
    with pytest.raises(ValueError, match=r"hw = \(10, 8\): H = 10 is not divisible by 4"):
        pipeline.text_to_image(["a red circle"], hw=(10, 8), progress=False)
    with pytest.raises(ValueError, match=r"cfg_img = 2.0 needs an input image"):
        pipeline.text_to_image(["a red circle"], hw=(8, 8), sampling=ImageSampling(cfg=3.0, cfg_img=2.0))
    with pytest.raises(ValueError, match=r"got 2 images and 1 instructions"):
        pipeline.edit(pictures(2), ["make it blue"], progress=False)
    with pytest.raises(ValueError, match=r"images \(H, W\) = \(6, 8\): H = 6 is not divisible by 4"):
        pipeline.edit(pictures(1, size=(6, 8)), ["make it blue"], progress=False)
    with pytest.raises(TypeError, match=r"captions must be a non-empty list of strings"):
        pipeline.text_to_image("a red circle", hw=(8, 8))
    other = BPETokenizer.train(CORPUS, 300, special_tokens=SpecialTokens.nextstep1().replace(bos="<s>"))
    with pytest.raises(ValueError, match=r"the text tokenizer's image_area_id is 2 but the model's config has 1"):
        NextStep1Pipeline(model, other, ae)
    with pytest.raises(ValueError, match=r"tokens of width 16 but the model reads latent_dim = 64"):
        NextStep1Pipeline(model, tok, autoencoder_tiny().build())
