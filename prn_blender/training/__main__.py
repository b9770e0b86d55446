"""`python -m prn_blender.training COMMAND`: the headless training entry point.

Commands: layout (regenerate the UV layout), teacher (3DDFA-V2 on every face), mediapipe (the
dense teacher, in its own venv), targets (fit + rasterise -> shards), train, eval, export.
Each command is one function below; `--help` on each lists its options.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None],
                          Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help_text: str, add_args: Callable[[argparse.ArgumentParser], None]):
    def register(run: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = (help_text, add_args, run)
        return run
    return register


def _train_args(parser: argparse.ArgumentParser) -> None:
    from .train import add_arguments

    add_arguments(parser)


@command("train", "train PRNet on target shards (resumable; torchrun-ready)", _train_args)
def _train(args: argparse.Namespace) -> int:
    from .train import config_from_args, train

    evaluate_fn = None
    if not args.no_eval:
        from .evaluate import make_training_evaluator

        evaluate_fn = make_training_evaluator()
    train(config_from_args(args), evaluate_fn)
    return 0


def _targets_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=REPO / "cache" / "targets" / "shards")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--cache", type=Path, default=REPO / "cache")
    parser.add_argument("--workers", type=int, default=2)


@command("targets", "fit ICT to the teachers and write target shards (resumable)", _targets_args)
def _targets(args: argparse.Namespace) -> int:
    from .targets import make_targets

    make_targets(args.out, args.shared, args.cache, args.workers)
    return 0


def _export_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, default=REPO / "runs" / "prnet" / "last.pt")
    parser.add_argument("--out", type=Path,
                        default=REPO / "model_weights" / "prnet_ict256.safetensors")
    parser.add_argument("--summary", default="")
    parser.add_argument("--dev-nme", default="")


@command("export", "export a checkpoint to the shipped safetensors format", _export_args)
def _export(args: argparse.Namespace) -> int:
    import torch

    from ..core.layout import load_layout
    from ..net.prnet import PRNet, trainable_parameter_count
    from ..net.weights import WeightsInfo, save_weights

    state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    model = PRNet()
    model.load_state_dict(state["model"])
    info = WeightsInfo(layout_id=load_layout().layout_id,
                       parameter_count=trainable_parameter_count(model), trained=True,
                       training=args.summary or f"step {state['step']}, epoch {state['epoch']}",
                       dev_nme=args.dev_nme)
    save_weights(model, args.out, info)
    print(f"wrote {args.out}")
    return 0


def _eval_args(parser: argparse.ArgumentParser) -> None:
    from .evaluate import add_arguments

    add_arguments(parser)


@command("eval", "dev-split NME per |yaw| bin, CED curve, teachers side by side", _eval_args)
def _eval(args: argparse.Namespace) -> int:
    from .evaluate import run_evaluation

    return run_evaluation(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prn_blender.training",
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_args, _run) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help_text))
    args = parser.parse_args(argv)
    return COMMANDS[args.command][2](args)


if __name__ == "__main__":
    sys.exit(main())
