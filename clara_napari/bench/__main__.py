"""``python -m clara_napari.bench ARGS`` is ``clara-napari bench ARGS``; ``--probe SPEC`` is the bench's
internal memory probe (one variant in this fresh process, see :mod:`.memory`)."""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--probe"]:
        from .memory import probe_main

        return probe_main(argv[1])
    from ..cli import (
        main as cli_main,  # the bench never imports the CLI otherwise: no cycle
    )

    return cli_main(["bench", *argv])


if __name__ == "__main__":
    sys.exit(main())
