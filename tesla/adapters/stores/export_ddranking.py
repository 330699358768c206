"""Export a synthetic set as the files DD-Ranking's evaluators read, and read them back.

DD-Ranking (``pip install ddranking``, NUS-HPC-AI-Lab/DD-Ranking) scores a set from three
tensors a user loads with ``torch.load`` and passes to ``compute_metrics`` (its README
"Quickstart" step 2 and ``demo_soft.py``/``demo_hard.py``):

- ``images.pt``: (N, C, H, W) float32 in the evaluator's input space, ordered class by
  class with the same number of images per class: the hard-label evaluators build the
  labels as ``ipc`` copies of 0, then of 1, ... and trust that order;
- ``labels.pt``: soft labels (N, K) as *logits* (its soft-label losses take
  ``softmax(labels / T)``) for ``soft_label_mode="S"``, or class ids (N,) int64 that
  ``LabelRobustScoreHard.compute_metrics(hard_labels=...)`` accepts;
- ``lr.pt``: the learned student lr, a 0-d tensor (``syn_lr``; DD-Ranking tunes the lr
  over 0.001 .. 0.1 when it is missing).

The input space is DD-Ranking's ``get_dataset``: ``ToTensor`` then ``Normalize`` with its
per-dataset statistics (CIFAR-10 *and* CIFAR-100 use (0.4914, 0.4822, 0.4465) /
(0.2023, 0.1994, 0.2010); the ImageNet family (0.485, 0.456, 0.406) / (0.229, 0.224,
0.225)), or with ``use_zca=True`` kornia's ``ZCAWhitening(eps=0.1)`` fitted on the
[0, 1] training images and nothing else, which is tesla's ZCA too. So a ZCA set is
written as stored (``use_zca=True``), a mean/std set is re-normalised affinely from its
own statistics to DD-Ranking's (exact, no clamping, so pixels outside [0, 1] survive),
and a [0, 1] set is normalised. ``meta.json`` records what was done (and the permutation
from the store's order to the class-sorted one), ``README.md`` the code a user runs.

Soft labels stored as probabilities are written as ``log(p)`` (p clamped at the float32
tiny): a softmax of logits is unchanged by a constant shift per row, so
``softmax(log p / T)`` is exactly what the teacher's logits would give at any ``T``.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Optional

import attrs
import numpy as np
import torch

from .errors import StoreError
from .synthetic import SyntheticSet

FORMAT = "tesla-ddranking-export"
FORMAT_VERSION = 1
FILES = ("images.pt", "labels.pt", "lr.pt", "meta.json", "README.md")

CIFAR_STATS = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# DD-Ranking 0.2.0's get_dataset: dataset name -> (mean, std) of its Normalize
DDRANKING_STATS = {
    "CIFAR10": CIFAR_STATS,
    "CIFAR100": CIFAR_STATS,
    "TinyImageNet": IMAGENET_STATS,
    "ImageNet1K": IMAGENET_STATS,
    "ImageNette": IMAGENET_STATS,
    "ImageWoof": IMAGENET_STATS,
    "ImageMeow": IMAGENET_STATS,
    "ImageSquawk": IMAGENET_STATS,
    "ImageFruit": IMAGENET_STATS,
    "ImageYellow": IMAGENET_STATS,
}
# tesla's dataset names -> DD-Ranking's ("demo", "imagefolder", "prepared" have none)
FROM_TESLA = {"cifar10": "CIFAR10", "cifar100": "CIFAR100", "tiny-imagenet": "TinyImageNet",
              "imagenet64": "ImageNet1K"}
NUM_CLASSES = {"CIFAR10": 10, "CIFAR100": 100, "TinyImageNet": 200, "ImageNet1K": 1000}


@attrs.frozen(eq=False)
class DDRankingExport:
    """What an export folder holds, read back.

    Attributes:
        images: (N, C, H, W) float32, class-sorted, in DD-Ranking's input space.
        labels: (N,) int64 class ids (the class-sorted order DD-Ranking assumes).
        soft_logits: (N, K) float32 soft labels as logits, or None for a hard-label set.
        lr: the learned lr, or None.
        meta: ``meta.json`` (dataset, ipc, space, the store order ...).
    """

    images: np.ndarray
    labels: np.ndarray
    soft_logits: Optional[np.ndarray]
    lr: Optional[float]
    meta: dict


def ddranking_dataset(name: Optional[str]) -> Optional[str]:
    """DD-Ranking's name for a dataset given by DD-Ranking's or tesla's name (None: none)."""
    if name is None:
        return None
    if name in DDRANKING_STATS:
        return name
    if name in FROM_TESLA:
        return FROM_TESLA[name]
    known = ", ".join(sorted(set(DDRANKING_STATS) | set(FROM_TESLA)))
    raise StoreError(f"dataset {name!r} has no DD-Ranking counterpart: pass one of {known}")


def _stored_dataset(syn: SyntheticSet) -> Optional[str]:
    ds = syn.attrs.get("dataset")
    name = ds.get("name") if isinstance(ds, dict) else ds if isinstance(ds, str) else None
    return FROM_TESLA.get(name) if name else None


def _class_order(labels: np.ndarray, num_classes: int, where: str) -> tuple[np.ndarray, int]:
    """The stable permutation that sorts the set by class, and the images per class.

    Refuses a set DD-Ranking would mislabel: a class missing or counts that differ.
    """
    if labels.ndim != 1 or labels.size == 0:
        raise StoreError(f"{where}: the set has no labels (got shape {labels.shape}); export a finished set")
    counts = np.bincount(labels.astype(np.int64), minlength=num_classes)
    if labels.min() < 0 or counts.size != num_classes or np.any(counts != counts[0]) or counts[0] == 0:
        raise StoreError(f"{where}: DD-Ranking needs the same number of images in each of the {num_classes} "
                         f"classes (it labels them by position); this set has {counts.tolist()} per class")
    return np.argsort(labels, kind="stable"), int(counts[0])


def _to_ddranking_space(images: np.ndarray, norm: dict, dd_name: Optional[str]) -> tuple[np.ndarray, dict]:
    """Images in DD-Ranking's input space, and the facts ``meta.json`` records about it."""
    kind = str(norm.get("kind")) if norm.get("kind") is not None else None
    target = DDRANKING_STATS.get(dd_name) if dd_name else None
    info: dict[str, Any] = {"tesla_space": kind or "unknown", "use_zca": kind == "zca", "converted": None}
    if kind == "zca" or target is None:
        return images, info
    t_mean = np.asarray(target[0], dtype=np.float64).reshape(1, -1, 1, 1)
    t_std = np.asarray(target[1], dtype=np.float64).reshape(1, -1, 1, 1)
    if kind == "meanstd":
        mean = np.asarray(norm["mean"], dtype=np.float64).reshape(1, -1, 1, 1)
        std = np.asarray(norm["std"], dtype=np.float64).reshape(1, -1, 1, 1)
        if mean.shape == t_mean.shape and np.allclose(mean, t_mean, atol=1e-6) and np.allclose(std, t_std, atol=1e-6):
            return images, info
        pixels = images.astype(np.float64) * std + mean
        info["converted"] = {"from_mean": mean.reshape(-1).tolist(), "from_std": std.reshape(-1).tolist()}
    elif kind == "identity":
        pixels = images.astype(np.float64)
        info["converted"] = {"from_mean": [0.0] * t_mean.shape[1], "from_std": [1.0] * t_std.shape[1]}
    else:
        return images, info
    if pixels.shape[1] != t_mean.shape[1]:
        raise StoreError(f"the set has {pixels.shape[1]} channels but DD-Ranking's {dd_name} has {t_mean.shape[1]}")
    info["converted"]["to_mean"], info["converted"]["to_std"] = list(target[0]), list(target[1])
    return ((pixels - t_mean) / t_std).astype(np.float32), info


def _soft_logits(syn: SyntheticSet) -> Optional[np.ndarray]:
    if syn.label_logits is not None:
        return np.asarray(syn.label_logits, dtype=np.float32)
    if syn.soft_labels is not None:
        p = np.asarray(syn.soft_labels, dtype=np.float32)
        return np.log(np.maximum(p, np.finfo(np.float32).tiny))
    return None


def export_ddranking(syn: SyntheticSet, out_dir: str, *, dataset: Optional[str] = None) -> list[str]:
    """Write ``images.pt``, ``labels.pt``, ``lr.pt`` (when the set has a finite lr),
    ``meta.json`` and ``README.md`` into ``out_dir`` (created).

    Args:
        syn: the set (see :class:`SyntheticSet`); every class must have the same count.
        out_dir: destination folder; existing files of these names are replaced.
        dataset: DD-Ranking's dataset name (``CIFAR10``, ``ImageNet1K`` ...) or tesla's
            (``cifar10``, ``imagenet64`` ...); default: the set's provenance.

    Returns:
        The paths written.

    Raises:
        StoreError: unequal classes, a dataset DD-Ranking does not know, or channels that
            do not match it; nothing is written then.
    """
    dd_name = ddranking_dataset(dataset) if dataset is not None else _stored_dataset(syn)
    images = np.asarray(syn.images, dtype=np.float32)
    if images.ndim != 4:
        raise StoreError(f"{out_dir}: images must be (N, C, H, W) (got {images.shape})")
    num_classes = syn.num_classes
    if dd_name in NUM_CLASSES and NUM_CLASSES[dd_name] != num_classes:
        raise StoreError(f"the set has {num_classes} classes but DD-Ranking's {dd_name} has {NUM_CLASSES[dd_name]}:"
                         f" pass the dataset it was distilled from")
    order, ipc = _class_order(np.asarray(syn.labels), num_classes, out_dir)
    out_images, space = _to_ddranking_space(images[order], dict(syn.normalizer_state), dd_name)
    logits = _soft_logits(syn)
    labels = logits[order] if logits is not None else np.asarray(syn.labels, dtype=np.int64)[order]
    lr = syn.lr if syn.lr is not None and math.isfinite(syn.lr) else None
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "ddranking_dataset": dd_name,
        "ipc": ipc, "num_classes": num_classes, "image_size": list(images.shape[2:]),
        "labels": "soft-logits" if logits is not None else "hard", "tesla_labels": syn.labels_kind,
        "lr": lr, "store_order": order.tolist(), **space,
    }
    os.makedirs(out_dir, exist_ok=True)
    written = []

    def put(name: str, value: torch.Tensor) -> None:
        path = os.path.join(out_dir, name)
        torch.save(value, path)
        written.append(path)

    put("images.pt", torch.from_numpy(np.ascontiguousarray(out_images)))
    put("labels.pt", torch.from_numpy(np.ascontiguousarray(labels)))
    stale_lr = os.path.join(out_dir, "lr.pt")
    if lr is not None:
        put("lr.pt", torch.tensor(lr, dtype=torch.float32))
    elif os.path.exists(stale_lr):
        os.remove(stale_lr)   # an lr left by an earlier export would be read as this set's
    for name, text in (("meta.json", json.dumps(meta, indent=1) + "\n"), ("README.md", readme(meta))):
        path = os.path.join(out_dir, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        written.append(path)
    return written


def _load(path: str) -> torch.Tensor:
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise StoreError(f"{path}: missing; export the set again with `tesla export ... --layout ddranking`") from None
    except Exception as exc:  # a damaged or foreign file: one line, not a traceback
        raise StoreError(f"{path}: not a tensor file ({type(exc).__name__}); export the set again") from None
    if not isinstance(value, torch.Tensor):
        raise StoreError(f"{path}: holds {type(value).__name__}, not a tensor; export the set again")
    return value


def read_ddranking_export(out_dir: str) -> DDRankingExport:
    """Read an export folder back (tensors through ``torch.load(weights_only=True)``)."""
    meta_path = os.path.join(out_dir, "meta.json")
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        raise StoreError(f"{meta_path}: missing or not JSON; export the set again") from None
    if meta.get("format") != FORMAT:
        raise StoreError(f"{out_dir}: not a tesla DD-Ranking export (format {meta.get('format')!r})")
    images = _load(os.path.join(out_dir, "images.pt")).numpy()
    stored = _load(os.path.join(out_dir, "labels.pt")).numpy()
    lr_path = os.path.join(out_dir, "lr.pt")
    lr = float(_load(lr_path)) if os.path.exists(lr_path) else None
    ipc, k = int(meta["ipc"]), int(meta["num_classes"])
    labels = np.repeat(np.arange(k, dtype=np.int64), ipc)
    soft = stored.astype(np.float32) if meta["labels"] == "soft-logits" else None
    if images.shape[0] != labels.shape[0] or stored.shape[0] != labels.shape[0]:
        raise StoreError(f"{out_dir}: {images.shape[0]} images and {stored.shape[0]} labels for {k} classes x "
                         f"{ipc}; export the set again")
    if soft is None and not np.array_equal(stored, labels):
        raise StoreError(f"{out_dir}: labels.pt is not class-sorted as DD-Ranking assumes; export the set again")
    return DDRankingExport(images=images, labels=labels, soft_logits=soft, lr=lr, meta=meta)


def readme(meta: dict) -> str:
    """The README written beside the tensors: what they are and the code a user runs."""
    ds = meta["ddranking_dataset"]
    size = tuple(meta["image_size"])
    soft = meta["labels"] == "soft-logits"
    has_lr = meta["lr"] is not None
    lines = [
        "# A tesla synthetic set for DD-Ranking",
        "",
        f"- `images.pt`: {meta['num_classes'] * meta['ipc']} images {size[0]}x{size[1]}, class by class, "
        f"{meta['ipc']} per class, in DD-Ranking's input space "
        + ("(ZCA-whitened as stored: run with `use_zca=True`)." if meta["use_zca"]
           else "(normalised with its statistics for this dataset: run with `use_zca=False`)."),
        "- `labels.pt`: " + ("soft labels as logits (N, K), for `soft_label_mode=\"S\"`."
                             if soft else "class ids (N,), in the order DD-Ranking assumes."),
        "- `lr.pt`: " + (f"the learned student lr ({meta['lr']:.6g}), passed as `syn_lr`." if has_lr
                         else "absent: the set has no learned lr, so DD-Ranking tunes one."),
        "- `meta.json`: what tesla did (dataset, space, the order of the images in the store).",
        "",
    ]
    if ds is None:
        lines += ["DD-Ranking has no dataset matching this set's real data, so its evaluators cannot "
                  "train the real-data references for it; the tensors are in tesla's model space.", ""]
        return "\n".join(lines)
    lines += [
        "Install DD-Ranking (`pip install ddranking`) and put the real data where it looks for it "
        "(`real_data_path`), then run:",
        "",
        "```python",
        "import torch",
        "from ddranking.metrics import " + ("LabelRobustScoreSoft" if soft else "LabelRobustScoreHard"),
        "",
        "images = torch.load(\"images.pt\", map_location=\"cpu\")",
    ]
    if soft:
        lines.append("labels = torch.load(\"labels.pt\", map_location=\"cpu\")")
    lines.append("lr = torch.load(\"lr.pt\", map_location=\"cpu\")" if has_lr else "lr = None  # tuned by DD-Ranking")
    common = [
        f"    dataset=\"{ds}\", real_data_path=\"./datasets\", ipc={meta['ipc']}, im_size={size},",
        f"    model_name=\"ConvNet-{3 if size[0] <= 32 else 4}\", use_zca={meta['use_zca']},",
        # the keys ddranking 0.2.0's DSA reads (its eval configs); the README's "prob_flip" ... fail
        "    data_aug_func=\"dsa\", aug_params={\"flip\": 0.5, \"rotate\": 15.0, \"saturation\": 2.0,",
        "        \"brightness\": 1.0, \"contrast\": 0.5, \"scale\": 1.2, \"crop\": 0.125, \"cutout\": 0.5},",
        "    optimizer=\"sgd\", lr_scheduler=\"step\", step_size=500, num_epochs=1000, weight_decay=0.0005,",
        "    momentum=0.9, syn_batch_size=256, real_batch_size=256, num_eval=5, eval_full_data=True,",
        "    random_data_format=\"tensor\", random_data_path=\"./random_data\", device=\"cuda\", dist=False,",
    ]
    if soft:
        lines += [
            "metric = LabelRobustScoreSoft(",
            *common,
            "    soft_label_mode=\"M\", soft_label_criterion=\"kl\",",
            "    loss_fn_kwargs={\"temperature\": 1.0, \"scale_loss\": False},",
            "    teacher_dir=\"./teacher_models\", teacher_model_names=[\"ConvNet-3\"],",
            ")",
            "print(metric.compute_metrics(image_tensor=images, soft_labels=labels, syn_lr=lr))",
        ]
    else:
        lines += [
            "metric = LabelRobustScoreHard(",
            *common,
            ")",
            "print(metric.compute_metrics(image_tensor=images, syn_lr=lr))",
        ]
    lines += [
        "```",
        "",
        "The settings above are the MTT/TESLA evaluation (SGD, DSA, 1,000 epochs, lr x0.1 at 500); change "
        "`model_name` (ConvNet-3 for 32 px, ConvNet-4 for 64 px, ResNet-18-BN ...) and the training "
        "settings to the ones you report.",
    ]
    if soft:
        lines += [
            "",
            "Soft labels: `soft_label_mode=\"S\"` trains on `labels.pt` as stored, but ddranking 0.2.0 "
            "fails in that mode when it labels the random reference (`_generate_soft_labels` calls "
            "`self.teacher_model`, which it never sets), so the example uses mode `\"M\"`: a teacher "
            "relabels every batch, for the set and its random reference alike. Teachers are read from "
            f"`teacher_dir/{ds}/<model_name>/ckpt_best.pt` (a state dict of DD-Ranking's network).",
        ]
    return "\n".join(lines) + "\n"
