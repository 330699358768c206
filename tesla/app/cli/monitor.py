"""``tesla monitor RUN_DIR``: watch a run (running elsewhere, or finished) in the TUI.

The screen follows ``RUN_DIR/events.jsonl`` as it grows; nothing is written to the run
directory, so several monitors can watch one run, from another machine on a shared
filesystem too.
"""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add the ``monitor`` command to ``app``."""

    @app.command("monitor")
    def monitor(
        run_dir: Path = typer.Argument(..., help="Run directory holding events.jsonl."),
        interval: float = typer.Option(0.25, "--interval", min=0.05, help="Seconds between reads of the log."),
    ) -> None:
        """Watch a run in the terminal UI: progress, loss, learned lr, memory, accuracy, images, log.

        Keys: 1-5 switch tabs, q quits.
        """
        from tesla.domain.rundir import EVENTS

        events = run_dir / EVENTS
        if not events.is_file():
            typer.secho(
                f"error: {events} does not exist: pass the directory a run was started in (it holds events.jsonl)",
                fg=typer.colors.RED, err=True,
            )
            raise typer.Exit(2)
        from tesla.app.tui.app import TeslaApp  # Textual loads only for this command

        TeslaApp(run_dir, poll_interval=interval).run()
