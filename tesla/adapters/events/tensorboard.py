"""TensorBoard sink: the run's scalars and preview images for ``tensorboard --logdir``.

Optional: TensorBoard is an extra (``pip install tesla-distill[tensorboard]``). This module
imports without it; :func:`available` says whether it can work and constructing
:class:`TensorBoardSink` without it raises :class:`TensorBoardUnavailable` with the fix.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Union

from tesla.domain.errors import UserError
from tesla.domain.urls import redact_text


class TensorBoardUnavailable(UserError):
    """TensorBoard is not installed."""


def available() -> bool:
    """True when ``torch.utils.tensorboard.SummaryWriter`` can be used (tensorboard installed)."""
    return importlib.util.find_spec("tensorboard") is not None


class TensorBoardSink:
    """Writes events as TensorBoard scalars/images under ``log_dir``.

    Iteration -> ``distill/loss``, ``distill/lr``, ``distill/grad_norm``, ``distill/seconds``;
    Epoch -> ``expert/train_loss|train_acc|test_acc`` (step = epochs seen);
    Memory -> ``memory/*_mib``; Evaluation -> ``eval/<model>/<subject>`` (mean);
    Preview -> image ``synthetic``; Warning/Error -> text.
    """

    def __init__(self, log_dir: Union[str, os.PathLike]) -> None:
        if not available():
            raise TensorBoardUnavailable(
                "TensorBoard is not installed: pip install tensorboard (or tesla-distill[tensorboard]),"
                " or drop --tensorboard"
            )
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = os.fspath(log_dir)
        self._writer = SummaryWriter(log_dir=self.log_dir)
        self._epochs = 0
        self._memory = 0

    def emit(self, event: Any) -> None:
        handler = getattr(self, "_on_" + getattr(event, "type", ""), None)
        if handler is not None:
            handler(event)

    def _on_iteration(self, e: Any) -> None:
        w, step = self._writer, e.iteration
        w.add_scalar("distill/loss", e.loss, step)
        w.add_scalar("distill/lr", e.lr, step)
        w.add_scalar("distill/seconds", e.seconds, step)
        if e.grad_norm is not None:
            w.add_scalar("distill/grad_norm", e.grad_norm, step)

    def _on_epoch(self, e: Any) -> None:
        self._epochs += 1
        w, step = self._writer, self._epochs
        w.add_scalar("expert/train_loss", e.train_loss, step)
        w.add_scalar("expert/train_acc", e.train_acc, step)
        if e.test_acc is not None:
            w.add_scalar("expert/test_acc", e.test_acc, step)

    def _on_memory(self, e: Any) -> None:
        self._memory += 1
        step = e.iteration if e.iteration is not None else self._memory
        if e.device_allocated is not None:
            self._writer.add_scalar("memory/device_allocated_mib", e.device_allocated / 2**20, step)
        if e.device_peak is not None:
            self._writer.add_scalar("memory/device_peak_mib", e.device_peak / 2**20, step)
        self._writer.add_scalar("memory/host_rss_mib", e.host_rss / 2**20, step)

    def _on_evaluation(self, e: Any) -> None:
        self._writer.add_scalar(f"eval/{e.model}/{e.subject}", e.mean, e.iteration or 0)

    def _on_preview(self, e: Any) -> None:
        import numpy as np

        self._writer.add_image("synthetic", np.asarray(e.pixels, dtype=np.uint8), e.iteration, dataformats="HWC")

    def _on_warning(self, e: Any) -> None:
        self._writer.add_text("warnings", redact_text(e.message), e.iteration or 0)

    def _on_error(self, e: Any) -> None:
        self._writer.add_text("errors", redact_text(e.message), e.iteration or 0)

    def _on_run_finished(self, e: Any) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> "TensorBoardSink":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


__all__ = ["TensorBoardSink", "TensorBoardUnavailable", "available"]
