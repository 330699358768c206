"""What every CLI command shares: one-line errors with exit code 2, signals as cancel,
storage options, and running a job under the terminal display or the TUI."""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import attrs
import typer
from rich.console import Console

err_console = Console(stderr=True)

EXIT_BAD_INPUT = 2
EXIT_NUMERICAL = 3


def fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    """Print one red line naming the problem and the fix, and exit."""
    print_error(message)
    raise typer.Exit(code)


def print_error(message: object) -> None:
    """One red ``error:`` line on stderr, every credential of the command's URLs and
    storage options taken out (:func:`command_secrets`): an error names the store it
    could not open, and a library's message may repeat the URL it was given."""
    from rich.markup import escape

    from tesla.domain.urls import redact_text

    text = redact_text(str(message), command_secrets())
    # the message is text, not markup: "tesla-distill[tensorboard]" must print as written
    err_console.print(f"[bold red]error:[/] {escape(text)}", markup=True, highlight=False, soft_wrap=True)


def command_secrets() -> list[str]:
    """The credentials the running command was given: those inside its URL arguments and
    the credential-like ``--storage-option`` values (read from click's context)."""
    from tesla.domain.urls import option_secrets, url_secrets

    ctx = _current_context()
    found: list[str] = []
    for name, value in (ctx.params.items() if ctx is not None else ()):
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if not isinstance(v, (str, Path)):
                continue
            found += url_secrets(v)
            if name == "storage_option" and "=" in str(v):
                key, val = str(v).split("=", 1)
                found += option_secrets({key: val})
    return found


def _current_context() -> Any:
    """The running command's click context (typer >= 0.17 carries its own copy of click)."""
    try:
        from click import get_current_context
    except ImportError:
        try:
            from typer._click.globals import get_current_context  # type: ignore[no-redef]
        except ImportError:  # pragma: no cover - a typer without either
            return None
    return get_current_context(silent=True)


# the OS errors a command maps to one line (a missing or unreadable path the user named);
# every other refusal is a UserError, raised by whichever layer found the problem
OS_INPUT_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


@contextlib.contextmanager
def errors() -> Iterator[None]:
    """Turn the project's input errors into one line and exit code 2; NaN stops into 3."""
    from tesla.domain.errors import NumericalError, UserError

    try:
        yield
    except typer.Exit:
        raise
    except NumericalError:
        # the job emitted an Error event with this message first, and the terminal display
        # (or --json, or the TUI's log) has shown it: exit without printing it twice
        raise typer.Exit(EXIT_NUMERICAL) from None
    except (UserError, *OS_INPUT_ERRORS) as e:
        msg = str(e) or e.__class__.__name__
        if isinstance(e, OSError) and e.filename:
            msg = f"{e.strerror or e}: {e.filename}"
        fail(msg)


def storage_options(pairs: Optional[list[str]]) -> Optional[dict]:
    """``["key=value", ...]`` -> dict (values parsed as JSON scalars where they parse)."""
    import json

    if not pairs:
        return None
    out = {}
    for pair in pairs:
        if "=" not in pair:
            fail(f"--storage-option {pair!r} is not key=value: e.g. --storage-option anon=true")
        k, v = pair.split("=", 1)
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out


@contextlib.contextmanager
def cancel_on_signals() -> Iterator[threading.Event]:
    """Ctrl-C or SIGTERM (pre-emption) sets the event: the job checkpoints and stops.
    A second Ctrl-C interrupts at once."""
    cancel = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield cancel
        return

    def handler(signum, frame):
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()
        err_console.print("[yellow]stopping after the current step and writing a checkpoint "
                          "(Ctrl-C again to abort)[/]")

    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, handler)
    try:
        yield cancel
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def logged_job(job: Callable[[Any, threading.Event], Any], run_dir: Path, box: dict) -> Callable:
    """``job`` for the TUI's worker thread: its events go to ``run_dir/events.jsonl``
    (which the TUI follows); its result or exception lands in ``box``."""

    def run(sink: Any, cancel: threading.Event) -> Any:
        from tesla.adapters.events.jsonl import JsonlSink
        from tesla.app import bootstrap

        log = JsonlSink(Path(run_dir) / bootstrap.EVENTS, on_error=lambda why: box.setdefault("warning", why))
        try:
            box["result"] = job(log, cancel)
        except BaseException as e:  # reported after the TUI closes
            box["error"] = e
        finally:
            log.close()
        return box.get("result")

    return run


def run_job(job: Callable[[Any, threading.Event], Any], *, run_dir: Optional[Path], quiet: bool = False,
            json_mode: bool = False, tui: bool = False, tensorboard: Optional[str] = None) -> Any:
    """Run ``job(sink, cancel)`` under the terminal display, or inside the TUI with ``tui``."""
    from tesla.app import bootstrap

    if tui:
        if run_dir is None:
            fail("--tui needs a run directory (--out)")
        from tesla.app.tui.app import TeslaApp

        box: dict = {}
        TeslaApp(Path(run_dir), job=logged_job(job, Path(run_dir), box)).run()
        if "warning" in box:  # the log the TUI follows stopped: say why once it has closed
            bootstrap.warn(box["warning"])
        if "error" in box:
            print_error(box["error"])
            raise box["error"]
        return box.get("result")
    sink, closers = bootstrap.event_sinks(run_dir, quiet=quiet, json_mode=json_mode, tensorboard=tensorboard)
    try:
        with cancel_on_signals() as cancel:
            return job(sink, cancel)
    finally:
        for close in closers:
            close()


@attrs.frozen
class RankedRun:
    """What :func:`run_on_ranks` returns: the job's result, whether this process is the
    one that prints (rank 0, or the only process), and how many processes took part."""

    result: Any
    is_writer: bool
    world: int


def run_on_ranks(prepare: Callable[..., Any], *, device: str, distributed: bool, run_dir: Optional[Path],
                 quiet: bool = False, json_mode: bool = False, tui: bool = False,
                 tensorboard: Optional[str] = None, setup: bool = False) -> RankedRun:
    """Prepare and run a job in this process, or as one rank of a ``torchrun`` job.

    ``prepare(ctx)`` checks and opens everything for this process's context (a
    DistContext: one plain process on ``device``, or this rank with ``distributed``) and
    returns a prepared job; with ``setup`` it is ``prepare(ctx, sink)`` and says what it
    does on ``sink`` (the terminal display or ``--json``, before the job's own log
    exists; nothing on other ranks or under the TUI). Rank 0 (or the only process) runs
    the job under the terminal display or the TUI; the other ranks run it silently. An error every rank saw alike (a
    failed check, a NaN stop) is printed by rank 0 alone: the others exit with its code.
    """
    from tesla.app import bootstrap
    from tesla.domain.errors import ConfigError, NumericalError
    from tesla.domain.ports import NullSink

    if distributed and tui:
        raise ConfigError("--tui shows one process: drop it with --distributed and follow rank 0 with "
                          f"`tesla monitor {run_dir}`")
    with bootstrap.process_context(device, distributed) as ctx:
        writer = ctx.is_writer
        try:
            # validates before any work
            prepared = _shown_setup(prepare, ctx, writer and not tui, quiet, json_mode) if setup else prepare(ctx)
            if writer:
                result = run_job(prepared.job, run_dir=run_dir, quiet=quiet, json_mode=json_mode, tui=tui,
                                 tensorboard=tensorboard)
            else:
                with cancel_on_signals() as cancel:
                    result = prepared.job(NullSink(), cancel)
        except Exception as e:
            if not writer and isinstance(e, NumericalError):
                raise typer.Exit(EXIT_NUMERICAL) from None
            if not writer and bootstrap.reported_to_all_ranks(e):
                raise typer.Exit(EXIT_BAD_INPUT) from None
            raise
        return RankedRun(result=result, is_writer=writer, world=ctx.world)


def _shown_setup(prepare: Callable[[Any, Any], Any], ctx: Any, show: bool, quiet: bool, json_mode: bool) -> Any:
    """``prepare(ctx, sink)`` with its set-up events on the terminal (or as JSON lines)."""
    from tesla.app import bootstrap
    from tesla.domain.ports import NullSink

    if not show:
        return prepare(ctx, NullSink())
    sink, closers = bootstrap.event_sinks(None, quiet=quiet, json_mode=json_mode)
    try:
        return prepare(ctx, sink)
    finally:
        for close in closers:
            close()


# --- what the user typed, and what --help shows ------------------------------------------------


def typed_options(names: Iterable[str]) -> frozenset:
    """The parameters among ``names`` that the user set (on the command line or through
    the environment), as opposed to left at their defaults: what a resumed run may take
    as a change (:func:`tesla.app.services.run.resumed_request`). Outside a command (a
    direct call) every parameter counts as set."""
    from typer._click.core import ParameterSource

    ctx = _click_context()
    if ctx is None:
        return frozenset(names)
    defaults = (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None)
    return frozenset(n for n in names if ctx.get_parameter_source(n) not in defaults)


def _click_context() -> Any:
    from typer._click.globals import get_current_context

    return get_current_context(silent=True)


def show_defaults(command: Callable, texts: dict) -> Callable:
    """Show ``texts[name]`` as the default of each named option of ``command`` in its
    ``--help`` (options whose default is None otherwise show none: a preset's value, the
    store's, or one sized to the data)."""
    import inspect

    for name, param in inspect.signature(command).parameters.items():
        if name in texts and hasattr(param.default, "show_default"):
            param.default.show_default = texts[name]
    return command


def config_defaults(cls: type, *, preset: bool = True, none: Optional[dict] = None) -> dict:
    """``--help`` default texts for options that override ``cls``'s fields: "preset's, X
    without" (``preset``) or "X"; ``none`` names what a None default means per field."""
    import attrs as _attrs

    none = none or {}
    texts = {}
    for a in _attrs.fields(cls):
        value = a.default.factory() if isinstance(a.default, _attrs.Factory) else a.default
        shown = none.get(a.name, "none") if value is None else (
            ("on" if value else "off") if isinstance(value, bool) else f"{value:g}" if isinstance(value, float)
            else str(value))
        texts[a.name] = f"preset's; {shown} without" if preset else shown
    return texts


def _plain(cls: type) -> type:
    """``cls`` (a typer command or group) whose flags show no ``<bool>`` type in ``--help``."""

    class Plain(cls):  # type: ignore[misc, valid-type]
        def get_params(self, ctx: Any) -> list:
            from typer.core import TyperOption

            params = super().get_params(ctx)
            for p in params:
                if isinstance(p, TyperOption) and p.is_flag and p.metavar is None:
                    p.metavar = ""  # a flag takes no value: no type to show
            return params

    Plain.__name__ = f"Plain{cls.__name__}"
    return Plain


def plain_flags(app: typer.Typer) -> None:
    """Every command and group of ``app`` shows its flags without a ``<bool>`` type."""
    from typer.core import TyperCommand, TyperGroup

    if app.info.cls in (None, TyperGroup) or isinstance(app.info.cls, typer.models.DefaultPlaceholder):
        app.info.cls = PLAIN_GROUP
    for info in app.registered_commands:
        if info.cls in (None, TyperCommand):
            info.cls = PLAIN_COMMAND
    for group in app.registered_groups:
        if group.typer_instance is not None:
            plain_flags(group.typer_instance)


def _plain_classes() -> tuple:
    from typer.core import TyperCommand, TyperGroup

    return _plain(TyperCommand), _plain(TyperGroup)


PLAIN_COMMAND, PLAIN_GROUP = _plain_classes()


def threads_option() -> Any:
    """The ``--threads`` option every compute command takes (tesla.domain.threads)."""
    from tesla.domain.threads import MAX_DEFAULT_THREADS

    return typer.Option(None, "--threads", help="torch CPU threads for this job.",
                        show_default=f"$TESLA_THREADS or $OMP_NUM_THREADS, else the CPUs this process may use, "
                                     f"at most {MAX_DEFAULT_THREADS}")
