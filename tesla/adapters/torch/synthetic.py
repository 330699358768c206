"""The learnable synthetic set on torch: images, learned lr, optional label logits.

``SyntheticState`` owns the tensors the distillation updates and their SGD optimisers
(momentum 0.5 as in MTT/TESLA; the label logits' own ``label_momentum`` where set),
keeps the learned lr positive, and converts to and from plain numpy arrays so that a checkpoint holds everything needed to continue
bit-for-bit (momentum buffers included). ``soft_labels`` is the teacher forward of
TESLA's soft label assignment, in chunks so 50,000 images fit.

``set_on='host'`` keeps the set (images, class ids, logits, lr) in host memory; the
optimisers' momentum buffers are made beside their parameters, so they stay on the host
too and the update runs there. Device memory then does not grow with the set: the
compute gathers each step's rows (:class:`~tesla.adapters.torch.compute.TorchCompute`),
through a pinned buffer of its own, so the set itself is not page-locked. The checkpoint
arrays are the same either way.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from tesla.adapters.torch.functional import FlatView
from tesla.adapters.torch.microbatch import check_set_on, host_copy
from tesla.domain.config import DistillConfig
from tesla.domain.labels import LEARNED_INIT


def soft_labels(view: FlatView, w: torch.Tensor, images: torch.Tensor, chunk: int) -> torch.Tensor:
    """Softmax of the network at ``w`` over ``images`` (N, C, H, W) -> (N, K), un-augmented.

    Computed under ``no_grad`` in chunks of ``chunk`` images: the teacher's output is a
    constant target for the iteration. Each chunk runs where ``w`` is and the labels come
    back beside the images (host memory for a host-resident set).
    """
    outs = []
    with torch.no_grad():
        for i in range(0, images.shape[0], chunk):
            x = images[i:i + chunk].detach().to(w.device, non_blocking=True)
            outs.append(F.softmax(view(w, x), dim=1).to(images.device))
    return torch.cat(outs)


def _sgd(param: torch.Tensor, lr: float, momentum: float) -> torch.optim.SGD:
    return torch.optim.SGD([param], lr=lr, momentum=momentum)


class SyntheticState:
    """Images (N, C, H, W), class ids (N,), learned lr (scalar), optional logits (N, K).

    Images are ordered class by class (``ipc`` per class), the layout of the published
    code and of our stores.

    Args:
        set_on: ``device`` keeps every tensor where ``images`` is; ``host`` copies them to
            host memory, where the optimisers then update them.
    """

    def __init__(self, images: torch.Tensor, class_ids: torch.Tensor, lr: float, cfg: DistillConfig, *,
                 logits: Optional[torch.Tensor] = None, set_on: str = "device") -> None:
        self.cfg = cfg
        self.set_on = check_set_on(set_on)
        own = host_copy if set_on == "host" else (lambda t: t.detach().clone())
        self.images = own(images).requires_grad_(True)
        self.class_ids = own(class_ids)
        self.lr = torch.tensor(float(lr), dtype=images.dtype, device=self.images.device, requires_grad=True)
        self.logits = None if logits is None else own(logits).requires_grad_(True)
        self.opt_images = _sgd(self.images, cfg.lr_img, cfg.momentum)
        self.opt_lr = _sgd(self.lr, cfg.lr_lr, cfg.momentum)
        self.opt_logits = None if self.logits is None else _sgd(self.logits, cfg.lr_label, cfg.label_sgd_momentum)
        self.soft: Optional[torch.Tensor] = None  # the latest teacher soft labels (SLA), if any

    # -- construction ------------------------------------------------------------------
    @classmethod
    def initialise(cls, data: Any, cfg: DistillConfig, *, num_classes: int, device: torch.device,
                   learned_labels: bool = False, set_on: str = "device") -> "SyntheticState":
        """Real images of each class (``cfg.init == 'real'``) or Gaussian noise, seeded by ``cfg.seed``.

        A host-resident set (``set_on='host'``) is made in host memory: ``device`` is not used.
        """
        ipc = cfg.ipc
        if check_set_on(set_on) == "host":
            device = torch.device("cpu")
        if cfg.init == "real":
            parts = [data.sample_class(c, ipc, seed=cfg.seed * 100_003 + c) for c in range(num_classes)]
            images = torch.cat(parts).to(device=device, dtype=torch.float32)
        else:
            gen = torch.Generator().manual_seed(cfg.seed)
            images = torch.randn((num_classes * ipc, *data.image_shape), generator=gen).to(device)
        class_ids = torch.arange(num_classes, device=device).repeat_interleave(ipc)
        logits = None
        if learned_labels:
            logits = F.one_hot(class_ids, num_classes).to(images.dtype) * LEARNED_INIT
        return cls(images, class_ids, cfg.lr_init, cfg, logits=logits, set_on=set_on)

    @property
    def lr_value(self) -> float:
        return float(self.lr.detach())

    # -- one update ----------------------------------------------------------------------
    def apply(self, images_grad: torch.Tensor, lr_grad: float, logits_grad: Optional[torch.Tensor] = None) -> float:
        """SGD step on images, lr (and logits); returns the image-gradient norm.

        The lr is clamped to ``cfg.min_lr`` after its step (kept positive).
        """
        norm = float(images_grad.norm())
        if self.cfg.max_grad_norm is not None and norm > self.cfg.max_grad_norm:
            images_grad = images_grad * (self.cfg.max_grad_norm / norm)
        self.images.grad = images_grad.to(device=self.images.device, dtype=self.images.dtype)
        self.lr.grad = torch.tensor(float(lr_grad), dtype=self.lr.dtype, device=self.lr.device)
        self.opt_images.step()
        self.opt_lr.step()
        if self.opt_logits is not None and logits_grad is not None:
            self.logits.grad = logits_grad.to(device=self.logits.device, dtype=self.logits.dtype)
            self.opt_logits.step()
        with torch.no_grad():
            self.lr.clamp_(min=self.cfg.min_lr)
        return norm

    def finite(self) -> Optional[str]:
        """None when all values are finite, else the name of the first that is not."""
        if not torch.isfinite(self.images).all():
            return "images"
        if not torch.isfinite(self.lr):
            return "lr"
        if self.logits is not None and not torch.isfinite(self.logits).all():
            return "label logits"
        return None

    def current_labels(self) -> torch.Tensor:
        """What a network trained on the set now would use: learned or teacher soft labels, else ids."""
        if self.logits is not None:
            return F.softmax(self.logits.detach(), dim=1)
        return self.soft if self.soft is not None else self.class_ids

    def labels_for_store(self, soft: Optional[torch.Tensor]) -> dict[str, np.ndarray]:
        out = {"labels": self.class_ids.cpu().numpy().astype(np.int64)}
        if self.logits is not None:
            out["label_logits"] = self.logits.detach().cpu().numpy()
            out["soft_labels"] = F.softmax(self.logits.detach(), dim=1).cpu().numpy()
        elif soft is not None:
            out["soft_labels"] = soft.detach().cpu().numpy().astype(np.float32)
        return out

    # -- checkpoints ---------------------------------------------------------------------
    @staticmethod
    def _momentum(opt: Optional[torch.optim.SGD], param: Optional[torch.Tensor]) -> Optional[np.ndarray]:
        if opt is None or param is None:
            return None
        buf = opt.state.get(param, {}).get("momentum_buffer")
        return None if buf is None else buf.detach().cpu().numpy()

    @staticmethod
    def _set_momentum(opt: Optional[torch.optim.SGD], param: Optional[torch.Tensor], value: Optional[np.ndarray]) -> None:
        if opt is None or param is None or value is None:
            return
        opt.state[param]["momentum_buffer"] = torch.as_tensor(value, device=param.device, dtype=param.dtype).clone()

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Everything needed to continue exactly, as numpy arrays."""
        out = {
            "images": self.images.detach().cpu().numpy(),
            "class_ids": self.class_ids.cpu().numpy().astype(np.int64),
            "lr": np.asarray([self.lr_value], dtype=np.float64),
        }
        if self.logits is not None:
            out["label_logits"] = self.logits.detach().cpu().numpy()
        for name, opt, param in (("images", self.opt_images, self.images), ("lr", self.opt_lr, self.lr),
                                 ("logits", self.opt_logits, self.logits)):
            buf = self._momentum(opt, param)
            if buf is not None:
                out[f"momentum_{name}"] = buf
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], cfg: DistillConfig, device: torch.device, *,
                    set_on: str = "device") -> "SyntheticState":
        """The state :meth:`to_arrays` saved, on ``device`` (or in host memory for ``set_on='host'``)."""
        if check_set_on(set_on) == "host":
            device = torch.device("cpu")
        images = torch.as_tensor(np.asarray(arrays["images"]), device=device)
        class_ids = torch.as_tensor(np.asarray(arrays["class_ids"]), device=device)
        logits = arrays.get("label_logits")
        logits = None if logits is None else torch.as_tensor(np.asarray(logits), device=device)
        state = cls(images, class_ids, float(np.asarray(arrays["lr"]).reshape(-1)[0]), cfg, logits=logits,
                    set_on=set_on)
        state._set_momentum(state.opt_images, state.images, arrays.get("momentum_images"))
        state._set_momentum(state.opt_lr, state.lr, arrays.get("momentum_lr"))
        state._set_momentum(state.opt_logits, state.logits, arrays.get("momentum_logits"))
        return state
