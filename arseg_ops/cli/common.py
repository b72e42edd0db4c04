"""What every `arseg` command shares: argument types, parent parsers, the error type, tables, device choice."""
import argparse
import os
import sys


class CliError(Exception):
    """A runtime failure to report as `arseg <command>: error: ...` with exit code 1."""


# ---- argument types (argparse turns their ArgumentTypeError into a usage error, exit code 2) ----


def size(text):
    """'720x960' -> (720, 960)."""
    try:
        h, w = (int(p) for p in str(text).lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError("expected HxW (e.g. 720x960), got %r" % (text,)) from None
    if h <= 0 or w <= 0:
        raise argparse.ArgumentTypeError("expected a positive HxW, got %r" % (text,))
    return h, w


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError("expected a positive integer, got %r" % (text,))
    return value


def positive_float(text):
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError("expected a positive number, got %r" % (text,))
    return value


def kernel_size(text):
    """An odd local_attn window in [1, MAX_KERNEL_SIZE] (the limit the ops enforce)."""
    from .._opinfo import MAX_KERNEL_SIZE

    try:
        value = int(text)
    except ValueError:
        value = 0
    if not (1 <= value <= MAX_KERNEL_SIZE and value % 2 == 1):
        raise argparse.ArgumentTypeError("expected an odd window size in [1, %d], got %r" % (MAX_KERNEL_SIZE, text))
    return value


def nonnegative_float(text):
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("expected a finite number >= 0, got %r" % (text,))
    return value


def scale(text):
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError("expected a number in (0, 1], got %r" % (text,))
    return value


def comma_list(choices):
    """An argument type: 'a,b' -> ('a', 'b') (order kept, duplicates dropped), every item one of `choices`."""
    def parse(text):
        items = tuple(dict.fromkeys(item.strip() for item in str(text).split(",")))
        bad = [item for item in items if item not in choices]
        if bad:
            raise argparse.ArgumentTypeError("expected a comma-separated list of %s, got %r (unknown: %s)"
                                             % (", ".join(choices), text, ", ".join(repr(b) for b in bad)))
        return items
    parse.__name__ = "list"  # argparse names the type in some messages
    return parse


def existing_file(text):
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError("no such file: %r" % (text,))
    return text


# ---- help ----


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, "(default: X)", unless the text already states it; options
    whose default is None or False (unset flags, "derived from ...") say what happens in their own text."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (not action.option_strings or default is None or default is False or default == argparse.SUPPRESS
                or "default" in text):
            return text
        if isinstance(default, (tuple, list)):
            default = ("x" if len(default) == 2 and all(isinstance(v, int) for v in default) and
                       action.metavar is None else " " if action.nargs else ",").join(map(str, default))
        return "%s (default: %s)" % (text, str(default).replace("%", "%%")) if text else "default: %s" % default


def use_help_formatter(parser):
    """HelpFormatter for `parser` and every sub-command under it."""
    parser.formatter_class = HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                use_help_formatter(sub)


# ---- parent parsers: options several commands share, defined once ----


def device_options():
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu")
    return p


def quiet_options(what="progress output"):
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("-q", "--quiet", action="store_true", help="no " + what)
    return p


def backbone_options():
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--backbone", choices=("psp18", "bisenet18"), default="psp18", help="the paper's network")
    p.add_argument("--scale", type=scale, default=0.5, help="LR scale in (0, 1] (default 0.5)")
    return p


def gop_options():
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--gop", type=positive_int, default=12, help="keyframe interval (default 12)")
    return p


# ---- devices ----


def cuda_usable():
    import torch

    import arseg_ops

    return torch.cuda.is_available() and arseg_ops.build_info()["cuda"]


def resolve_device(device, parser):
    """The --device value (default: cuda when usable, else cpu); a usage error if cuda is asked for but unusable."""
    import torch

    import arseg_ops

    device = device or ("cuda" if cuda_usable() else "cpu")
    if device == "cuda" and not cuda_usable():
        parser.error("--device cuda: needs a CUDA device and an arseg_ops build with CUDA kernels "
                     "(torch %s, CUDA device available: %s, CUDA kernels built: %s)"
                     % (torch.__version__, torch.cuda.is_available(), arseg_ops.build_info()["cuda"]))
    return device


# ---- output ----


def format_table(headers, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]

    def line(cells):
        return "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def check_output(path, parser, suffixes, what):
    if not path.lower().endswith(suffixes):
        parser.error("-o/--output: %s must end with one of %s, got %r" % (what, ", ".join(suffixes), path))
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        parser.error("-o/--output: folder %r does not exist" % folder)


def progress_bar(total, desc, quiet, unit="frame"):
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc, disable=quiet, file=sys.stderr)
