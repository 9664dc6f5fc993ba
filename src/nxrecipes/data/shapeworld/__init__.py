"""ShapeWorld: the built-in synthetic world of nx (scenes of coloured shapes, captions, tasks).

A text corpus for tokenizers: ``shapeworld.corpus.text_corpus``.

Editing, interleaved and in-context samples: ``shapeworld.edits`` and ``shapeworld.sequences``.
"""

from nxrecipes.data.shapeworld.captions import (
    RELATION_PHRASES,
    TEMPLATES,
    canonical_caption,
    parse_caption,
    parse_prompt,
    prompt_for_spec,
)
from nxrecipes.data.shapeworld.dataset import (
    PromptSpec,
    ShapeWorld,
    ShapeWorldStream,
    export,
    load_jsonl_specs,
    scene_from_dict,
    spec_from_dict,
)
from nxrecipes.data.shapeworld.knowledge import FACTS, riddle
from nxrecipes.data.shapeworld.render import render, to_float, to_pil, to_tensor
from nxrecipes.data.shapeworld.scenes import (
    Combos,
    Constraints,
    random_scene,
    random_spec,
    satisfies,
    scene_for_spec,
)
from nxrecipes.data.shapeworld.spec import CATEGORIES, EDIT_OPS, Detection, EditSpec, ObjectQuery, Spec
from nxrecipes.data.shapeworld.splits import (
    HELDOUT_PAIRS,
    HELDOUT_RELATIONS,
    SPLITS,
    split_constraints,
    split_rng,
)
from nxrecipes.data.shapeworld.tasks import (
    TASK_MAKERS,
    Captioning,
    TextOnly,
    TextToImage,
    WorldKnowledge,
    make_sample,
    task_names,
)
from nxrecipes.data.shapeworld.world import (
    COLOURS,
    RELATIONS,
    SHAPES,
    SIZES,
    Scene,
    ShapeObject,
    relation_holds,
)

__all__ = [
    "CATEGORIES",
    "COLOURS",
    "EDIT_OPS",
    "FACTS",
    "HELDOUT_PAIRS",
    "HELDOUT_RELATIONS",
    "RELATIONS",
    "RELATION_PHRASES",
    "SHAPES",
    "SIZES",
    "SPLITS",
    "TASK_MAKERS",
    "TEMPLATES",
    "Captioning",
    "Combos",
    "Constraints",
    "Detection",
    "EditSpec",
    "ObjectQuery",
    "PromptSpec",
    "Scene",
    "ShapeObject",
    "ShapeWorld",
    "ShapeWorldStream",
    "Spec",
    "TextOnly",
    "TextToImage",
    "WorldKnowledge",
    "canonical_caption",
    "export",
    "load_jsonl_specs",
    "make_sample",
    "parse_caption",
    "parse_prompt",
    "prompt_for_spec",
    "random_scene",
    "random_spec",
    "relation_holds",
    "render",
    "riddle",
    "satisfies",
    "scene_for_spec",
    "scene_from_dict",
    "spec_from_dict",
    "split_constraints",
    "split_rng",
    "task_names",
    "to_float",
    "to_pil",
    "to_tensor",
]
