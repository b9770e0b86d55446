"""`python -m prn_blender.training COMMAND [options]`: the headless training entry point.

Every subcommand is one `@command` function plus an options function; `--help` on each lists
its options. Add one by writing both below (nothing else to register):

    def _mycmd_args(parser): parser.add_argument(...)

    @command("mycmd", "one line of help", _mycmd_args)
    def _mycmd(args) -> int: ...; return 0

`train` runs unchanged under torchrun (docs/TRAINING.md).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from ..errors import PrnError

REPO = Path(__file__).resolve().parents[2]

AddArgs = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, tuple[str, AddArgs, Run]] = {}
"""name -> (help line, add_arguments, run); filled by `@command`."""


def command(name: str, help_text: str, add_args: AddArgs) -> Callable[[Run], Run]:
    """Register a subcommand: `run(args) -> exit code`, `add_args(parser)` its options."""

    def register(run: Run) -> Run:
        if name in COMMANDS:
            raise ValueError(f"subcommand '{name}' registered twice")
        COMMANDS[name] = (help_text, add_args, run)
        return run

    return register


def _train_args(parser: argparse.ArgumentParser) -> None:
    from .train import add_arguments

    add_arguments(parser)


@command("train", "train PRNet on target shards (resumable; runs under torchrun)", _train_args)
def _train(args: argparse.Namespace) -> int:
    from .train import config_from_args, given_options, train, with_run_options

    argv = args.argv[args.argv.index("train") + 1:] if "train" in args.argv else []
    config = with_run_options(config_from_args(args), given_options(argv))
    evaluate_fn = None
    if not args.no_eval and int(os.environ.get("RANK", "0")) == 0:  # only rank 0 evaluates
        from .evaluate import make_training_evaluator

        try:
            evaluate_fn = make_training_evaluator(input_size=config.resolution)
        except FileNotFoundError as error:
            raise FileNotFoundError(
                f"the periodic dev evaluation needs ../shared/data beside the repo ({error}); "
                "pass --no-eval to train without it") from error
    train(config, evaluate_fn)
    return 0


def _targets_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=REPO / "cache" / "targets" / "shards")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--cache", type=Path, default=REPO / "cache")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-mediapipe", dest="mediapipe", action="store_false",
                        help="do not run the MediaPipe dense teacher (no extra venv); "
                             "its cached files are still used when present")


@command("targets", "fit ICT to the teachers and write target shards (resumable)", _targets_args)
def _targets(args: argparse.Namespace) -> int:
    from .targets import make_targets

    return 1 if make_targets(args.out, args.shared, args.cache, args.workers,
                              args.mediapipe) else 0


def _report_args(parser: argparse.ArgumentParser) -> None:
    from .report import add_arguments

    add_arguments(parser)


@command("targets-report", "NME of the targets vs hand labels beside both teachers; overlays",
         _report_args)
def _targets_report(args: argparse.Namespace) -> int:
    from .report import run_report

    return run_report(args)


def _export_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, default=REPO / "runs" / "prnet" / "last.pt")
    parser.add_argument("--out", type=Path,
                        default=REPO / "model_weights" / "prnet_ict256.safetensors")
    parser.add_argument("--summary", default="", help="training summary stored in the file")
    parser.add_argument("--dev-nme", default="", help="dev NME figures stored in the file")
    parser.add_argument("--input-size", type=int, default=None,
                        help="input side the network runs at (default: the checkpoint's last "
                             "training resolution)")
    parser.add_argument("--raw", action="store_true",
                        help="the raw training weights, not the checkpoint's weight average")


@command("export", "export a trainer checkpoint to the shipped safetensors format", _export_args)
def _export(args: argparse.Namespace) -> int:
    from .train import export_checkpoint

    had_readout = False
    if args.out.is_file():
        from ..net.weights import read_info

        try:
            had_readout = read_info(args.out).landmark_texels is not None
        except PrnError:
            pass
    out = export_checkpoint(args.checkpoint, args.out, args.summary, args.dev_nme,
                            args.input_size, ema=not args.raw)
    if had_readout:
        print(f"note: {out} had a fitted landmark readout, which this export replaced",
              file=sys.stderr)
    print(f"wrote {out}\nnext, fit its landmark readout on the training faces (docs/TRAINING.md "
          f"section 7): python -m prn_blender.training readout --weights {out}")
    return 0


def _eval_args(parser: argparse.ArgumentParser) -> None:
    from .evaluate import add_arguments

    add_arguments(parser)


@command("eval", "dev-split NME per |yaw| bin, CED curve, teachers side by side", _eval_args)
def _eval(args: argparse.Namespace) -> int:
    from .evaluate import run_evaluation

    return run_evaluation(args)


def _readout_args(parser: argparse.ArgumentParser) -> None:
    from .readout import add_arguments

    add_arguments(parser)


@command("readout", "fit a weights file's landmark readout on training faces (into its "
         "metadata)", _readout_args)
def _readout(args: argparse.Namespace) -> int:
    from .readout import write_readout

    write_readout(args.weights, args.faces)
    return 0


def _info_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", type=Path,
                        default=REPO / "model_weights" / "prnet_ict256.safetensors")
    parser.add_argument("--dev-nme", default=None,
                        help="replace the dev NME text stored in the file (tensors unchanged)")
    parser.add_argument("--summary", default=None,
                        help="replace the training summary stored in the file")


@command("info", "show a weights file's metadata; --dev-nme / --summary update it (the "
         "readout and tensors are kept)", _info_args)
def _info(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ..net.weights import read_info, rewrite_info

    info = read_info(args.weights)
    changes = {k: v for k, v in (("dev_nme", args.dev_nme), ("training", args.summary))
               if v is not None}
    if changes:
        rewrite_info(args.weights, replace(info, **changes))
        info = read_info(args.weights)
    readout = ("fitted on training faces" if info.landmark_texels is not None
               else "none (the layout's texels)")
    for key, value in (("weights", args.weights), ("sha256", info.sha256),
                       ("layout", info.layout_id), ("trained", info.trained),
                       ("parameters", f"{info.parameter_count:,}"),
                       ("input size", info.input_size or "the layout's"),
                       ("landmark readout", readout), ("training", info.training),
                       ("dev NME", info.dev_nme), ("licence", info.licence)):
        print(f"{key:<17} {value}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prn_blender.training",
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_args, _run) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help_text, description=help_text))
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return COMMANDS[args.command][2](args)
    except (FileNotFoundError, FileExistsError, ValueError, PrnError) as error:
        # The mistakes of a command line (a missing folder, a run that exists, the wrong kind
        # of file): one line. PRN_BLENDER_DEBUG=1 shows the traceback.
        if os.environ.get("PRN_BLENDER_DEBUG"):
            raise
        print(f"python -m prn_blender.training {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
