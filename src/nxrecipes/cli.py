"""The ``nx`` command.

    nx demo [--out DIR]     render the next-scale demo grid (what ``make demo`` runs)
    nx components           every protocol and the nx implementations of it
"""

from __future__ import annotations

import argparse

from nxcore.head import OutputHead
from nxcore.position.protocol import AdditivePositionalEncoder, RotaryPositionalEncoder
from nxcore.reward import RewardModel
from nxcore.sampler.protocol import LatentSampler, TokenSampler
from nxcore.schedule import ScaleSchedule
from nxcore.testing.discovery import implementations
from nxcore.tokenizer.protocol import ContinuousImageTokenizer, DiscreteImageTokenizer, TextTokenizer

PROTOCOLS = (
    TextTokenizer,
    DiscreteImageTokenizer,
    ContinuousImageTokenizer,
    ScaleSchedule,
    RotaryPositionalEncoder,
    AdditivePositionalEncoder,
    OutputHead,
    TokenSampler,
    LatentSampler,
    RewardModel,
)


def components() -> None:
    for protocol in PROTOCOLS:
        found = implementations(protocol)
        names = ", ".join(f"{c.__module__}.{c.__qualname__}" for c in found) or "(none yet)"
        print(f"{protocol.__name__:<26} {names}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="nx", description="nx: autoregressive image generation")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="render the next-scale demo grid")
    demo.add_argument("--out", default="out/demo")
    commands.add_parser("components", help="list protocols and their implementations")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from nxrecipes.demo import main as demo_main

        demo_main(["--out", args.out])
    else:
        components()


if __name__ == "__main__":
    main()
