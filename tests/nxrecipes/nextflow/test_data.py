import copy

import numpy as np
import pytest
import torch

from nxcore.tokenizer import SpecialTokens, Vocabulary
from nxcore.tokenizer.dual.self_correction import selected_count
from nxrecipes.data.shapeworld import ShapeWorld, make_sample
from nxrecipes.nextflow import Text, collate
from nxrecipes.nextflow.data import EOS, NEXTFLOW_SPECIALS, TASK_FORMATS, ExampleBuilder
from nxrecipes.nextflow.train import NextFlowBatches
from nxrecipes.train.curriculum import Curriculum, Stage

SIZE = 32  # ShapeWorld's smallest; the builder resizes to the tokenizer's 8 px


@pytest.fixture(scope="module")
def image_tokenizer(world):
    return copy.deepcopy(world.image)  # the builder freezes it: leave the shared one alone


def builder(world, image_tokenizer, **changes):
    fields = {"text": world.text, "vocabulary": world.vocab, "image_tokenizer": image_tokenizer,
              "schedule": world.schedule}
    fields.update(changes)
    return ExampleBuilder(**fields)


def record(task, seed=0):
    return make_sample(task, np.random.default_rng(seed), SIZE)


def signature(example, eos):
    out = []
    for part in example.parts:
        if isinstance(part, Text):
            out.append("eos" if part.ids == (eos,) else ("text", part.loss))
        else:
            out.append(("image", part.loss))
    return out


T, T_, I, I_ = ("text", True), ("text", False), ("image", True), ("image", False)  # _: context only
EXPECTED = {
    "t2i": [T_, I, "eos"],
    "captioning": [I_, T, "eos"],
    "edit": [I_, T_, I, "eos"],
    "in_context": [T_, I_, I_, I_, I_, I_, I, "eos"],
    "world_knowledge": [T_, T, I, "eos"],
    "text_only": [T, "eos"],
}


def test_every_task_has_its_format_and_ends_with_a_trained_eos(world, image_tokenizer):
    b = builder(world, image_tokenizer, cfg_dropout=0.0, caption_inversion=0.0)
    records = [record(task) for task in TASK_FORMATS]
    examples = b.build(records, list(range(len(records))))
    eos = world.vocab.special_id(EOS)
    for task, rec, example in zip(TASK_FORMATS, records, examples, strict=True):
        assert example.task == task
        sig = signature(example, eos)
        if task == "interleaved":
            assert sig == [T, I] * (len(rec.parts) // 2) + ["eos"]
        else:
            assert sig == EXPECTED[task], task
        assert example.parts[-1].loss
    think = examples[TASK_FORMATS.index("world_knowledge")].parts[1].ids
    assert think[0] == world.vocab.special_id("<think>") and think[-1] == world.vocab.special_id("</think>")
    assert world.text.decode(list(think[1:-1])) == records[TASK_FORMATS.index("world_knowledge")].reasoning
    assert world.text.encode("<think>") == [think[0]]  # what a sampler writes is the id trained on
    batch = collate(examples, world.vocab)
    assert ((batch.targets == eos).sum(dim=1) == 1).all()  # every row learns to stop, once


def test_caption_inversion_and_cfg_dropout_happen_at_their_rates(world, image_tokenizer):
    b = builder(world, image_tokenizer)  # defaults: 10% inversion, 10% dropout
    t2i, edit, n = record("t2i"), record("edit"), 3000
    eos = world.vocab.special_id(EOS)
    plans = [b.plan(t2i, i) for i in range(n)]
    inverted = [task == "captioning" for task, _ in plans]
    assert abs(np.mean(inverted) - 0.10) < 0.02
    for (_, parts), inv in zip(plans, inverted, strict=True):
        if inv:  # the t2i prompt becomes the trained caption of a context image
            assert parts[0][1] is False and parts[1].loss and parts[1].ids == tuple(world.ids(t2i.prompt))
    kept = [parts for task, parts in plans if task == "t2i"]
    dropped = [isinstance(parts[0], tuple) for parts in kept]  # the example starts with its image
    assert abs(np.mean(dropped) - 0.10) < 0.02
    edits = [b.plan(edit, i)[1] for i in range(n)]
    no_instruction = [len(parts) == 3 for parts in edits]  # source, target, eos
    assert abs(np.mean(no_instruction) - 0.10) < 0.02
    assert all(parts[-1].ids == (eos,) for parts in edits)
    never = builder(world, image_tokenizer, cfg_dropout=0.0, caption_inversion=0.0)
    assert {never.plan(t2i, i)[0] for i in range(300)} == {"t2i"}
    assert all(len(never.plan(edit, i)[1]) == 4 for i in range(300))


def test_self_correction_changes_only_the_inputs_of_trained_images(world, image_tokenizer):
    rec = record("edit")
    b = builder(world, image_tokenizer, cfg_dropout=0.0)  # p = 1, 60% of the cells, top-8
    source, _, target, _ = b.build([rec], [0])[0].parts
    clean_source = b.encode([rec.source_image], correct=False)[0]
    clean_target = b.encode([rec.target_image], correct=False)[0]
    assert not source.loss and target.loss
    for k in range(world.schedule.num_steps):
        assert torch.equal(source.inputs[k], clean_source[k][0])
        assert torch.equal(source.targets[k], clean_source[k][0])
    assert torch.equal(target.targets[0], clean_target[0][0])  # the first target sees the clean image
    changed = [int((i != t).sum()) for i, t in zip(target.inputs, target.targets, strict=True)]
    allowed = [selected_count(0.6, h, w) for h, w in world.schedule.steps]
    assert all(c <= a for c, a in zip(changed, allowed, strict=True)) and sum(changed) > 0

    off = builder(world, image_tokenizer, cfg_dropout=0.0, self_correction_fraction=0.0)
    target = off.build([rec], [0])[0].parts[2]
    for k in range(world.schedule.num_steps):
        assert torch.equal(target.inputs[k], clean_target[k][0])
        assert torch.equal(target.targets[k], clean_target[k][0])


def _same(a, b):
    assert a.task == b.task and len(a.parts) == len(b.parts)
    for p, q in zip(a.parts, b.parts, strict=True):
        assert type(p) is type(q) and p.loss == q.loss
        if isinstance(p, Text):
            assert p.ids == q.ids
        else:
            assert all(torch.equal(x, y) for x, y in zip(p.inputs + p.targets, q.inputs + q.targets, strict=True))


def test_examples_depend_on_their_index_only(world, image_tokenizer):
    b = builder(world, image_tokenizer, cfg_dropout=0.5, caption_inversion=0.5)
    records = [record("t2i", 1), record("edit", 2), record("captioning", 3)]
    first, again = b.build(records, [7, 8, 9]), b.build(records, [7, 8, 9])
    for x, y in zip(first, again, strict=True):
        _same(x, y)
    alone = b.build(records[2:], [9])[0]  # no self-corrected image: exactly the same alone
    _same(alone, first[2])
    for i, rec in enumerate(records[:2]):  # the coins follow the index, not the batch
        assert signature(b.build([rec], [7 + i])[0], 0) == signature(first[i], 0)
    assert [b.coins(i) for i in range(50)] != [b.coins(i, epoch=1) for i in range(50)]


def test_batches_resume_exactly(world, image_tokenizer):
    dataset = ShapeWorld("train", SIZE, ("t2i", "captioning", "edit", "text_only"), length=16, seed=0)

    def source():
        return NextFlowBatches(dataset, builder(world, image_tokenizer), batch_size=2, seed=3)

    a = source()
    for _ in range(2):
        a.next_batch()
    state = a.state_dict()
    ahead = [a.next_batch() for _ in range(2)]
    b = source()
    b.load_state_dict(state)
    resumed = [b.next_batch() for _ in range(2)]
    for x, y in zip(ahead, resumed, strict=True):
        assert x.tasks == y.tasks
        for name in ("ids", "targets", "weights"):
            assert torch.equal(getattr(x, name), getattr(y, name))
        for g, h in zip(x.images, y.images, strict=True):
            assert all(torch.equal(u, v) for u, v in zip(g.inputs, h.inputs, strict=True))


def test_a_curriculum_trains_a_prefix_of_the_schedule_first(world, image_tokenizer):
    dataset = ShapeWorld("train", SIZE, ("t2i",), length=16, seed=0)
    curriculum = Curriculum((Stage("low", 0, level=4, num_scales=2), Stage("full", 2, level=8, num_scales=3)))
    source = NextFlowBatches(dataset, builder(world, image_tokenizer), batch_size=2, seed=3,
                             curriculum=curriculum)
    grids = [source.next_batch().images[0].schedule.steps for _ in range(3)]
    assert grids == [((1, 1), (2, 2)), ((1, 1), (2, 2)), ((1, 1), (2, 2), (4, 4))]


def test_bad_builders_and_records_are_refused(world, image_tokenizer):
    no_eos = type(world.text).train(["a red circle"] * 4, 300, special_tokens=SpecialTokens.nextflow())
    vocab = Vocabulary.from_tokenizer(no_eos, 32, SpecialTokens.nextflow())
    with pytest.raises(ValueError, match="NEXTFLOW_SPECIALS"):
        builder(world, image_tokenizer, text=no_eos, vocabulary=vocab)
    with pytest.raises(ValueError, match="codebook_size"):
        builder(world, image_tokenizer, vocabulary=Vocabulary.from_tokenizer(world.text, 64, NEXTFLOW_SPECIALS))
    with pytest.raises(ValueError, match="self_correction_k"):
        builder(world, image_tokenizer, self_correction_k=33)
    with pytest.raises(ValueError, match="no NextFlow format"):
        builder(world, image_tokenizer).build([object()], [0])
    with pytest.raises(ValueError, match="one index per record"):
        builder(world, image_tokenizer).build([record("t2i")], [0, 1])
