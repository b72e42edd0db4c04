"""The `arseg` command (also `python -m arseg_ops`): one module per command group, registered here.

    bench             bench_command.py    fused kernels vs their baselines, AR-Seg key vs non-key frames (main job)
    flops             flops_command.py    GMACs next to the paper's Table 1
    segment, motion   video_commands.py   AR-Seg and codec motion on H.264 videos
    manifest, synthetic, train, eval
                      train_commands.py   training and evaluation (arseg_ops.train); torchrun-ready

Exit codes: 0 success, 1 a runtime failure (unreadable or unsupported file, failed measurement setup),
2 bad command-line arguments (argparse's convention), 130 interrupted. Errors and warnings are printed as
`arseg <command>: error: ...` / `arseg <command>: warning: ...`.
"""
import argparse
import sys
import warnings

from . import bench_command, common, flops_command, train_commands, video_commands
from .common import CliError

COMMAND_GROUPS = (bench_command, flops_command, video_commands, train_commands)


def build_parser():
    parser = argparse.ArgumentParser(prog="arseg", description="AR-Seg kernels (mv_warp, local_attn): "
                                     "benchmarks, cost accounting and compressed-video segmentation.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in COMMAND_GROUPS:
        group.register(sub)
    # Each command reports usage errors with its own parser ("arseg motion: error: ..."), not the top-level one.
    for name, command_parser in sub.choices.items():
        command_parser.set_defaults(command_parser=command_parser)
    common.use_help_formatter(parser)  # every --help shows the defaults
    return parser


def _plain_warnings(command):
    """Warnings as one plain line (no source path or line of library code), restored by the caller."""
    def show(message, category, filename, lineno, file=None, line=None):
        print("arseg %s: warning: %s" % (command, message), file=sys.stderr)
    return show


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    shown = warnings.showwarning
    warnings.showwarning = _plain_warnings(args.command)
    try:
        return args.func(args, args.command_parser) or 0
    except (CliError, FileNotFoundError, ValueError, OSError) as exc:
        print("arseg %s: error: %s" % (args.command, exc), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("arseg %s: interrupted" % args.command, file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":
    sys.exit(main())
