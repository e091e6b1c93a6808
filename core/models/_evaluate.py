"""The ``python -m core.models.<name> --evaluate FILE...`` command of the window models.

Each model's ``main`` says what one run does (load the files, evaluate, print its own table) and
adds its own options; the common options and the error handling live here: a tickmesh error
(a missing or malformed bar file, too few bars) ends the command with its message on stderr and
exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from core.errors import TickmeshError

__all__ = ["evaluation_main"]


def evaluation_main(name: str, argv: Sequence[str] | None, run: Callable[[argparse.Namespace], None], *,
                    description: str | None = None,
                    options: Callable[[argparse.ArgumentParser], None] | None = None) -> int:
    """Parses ``--evaluate FILE... [--seed S] [--folds K]`` and the model's options, then runs.

    Args:
        name: the model; the command is ``python -m core.models.<name>``.
        argv: the arguments (``None``: the command line).
        run: loads ``args.evaluate``, evaluates and prints the results.
        description: the ``--help`` text.
        options: adds the model's own options to the parser.

    Returns:
        The exit status: 0, or 2 after a `TickmeshError` (its message printed to stderr).
    """
    parser = argparse.ArgumentParser(prog=f"python -m core.models.{name}", description=description)
    parser.add_argument("--evaluate", nargs="+", metavar="FILE", required=True, help="bar files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folds", type=int, default=4)
    if options is not None:
        options(parser)
    args = parser.parse_args(argv)
    try:
        run(args)
    except TickmeshError as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return 2
    return 0
