"""The ``tesla`` command: a typer app assembled from one small module per command."""

from __future__ import annotations

import importlib

from tesla.app.threads import prepare_process

# before any command imports torch: its OpenMP runtime reads the wait policy and the thread
# count once, when it starts (tesla.domain.threads says why these defaults)
prepare_process()

import typer  # noqa: E402

from tesla.app.cli.common import plain_flags  # noqa: E402

app = typer.Typer(
    name="tesla",
    help="Dataset distillation by trajectory matching at constant memory (TESLA, exact and MTT gradients).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# each module defines register(app); a module that is missing is skipped so that a
# partial install still offers the rest
COMMANDS = ("demo", "run", "experts", "distill", "evaluate", "export", "info", "import_mtt", "merge", "monitor", "data",
            "bench")

for _name in COMMANDS:
    try:
        _module = importlib.import_module(f"tesla.app.cli.{_name}")
    except ModuleNotFoundError as _e:
        if _e.name != f"tesla.app.cli.{_name}":
            raise
        continue
    _module.register(app)

plain_flags(app)  # flags take no value: --help shows no "<bool>" beside them


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
