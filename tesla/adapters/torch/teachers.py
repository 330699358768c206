"""Teachers of the relabel protocol on torch: expert snapshots and cached real-data networks.

:class:`TorchTeachers` implements :class:`~tesla.domain.ports.Teachers`. An expert teacher
is the trajectory store's model with one snapshot's flat parameters
(:func:`~tesla.adapters.torch.relabel.snapshot_teacher`). A real-data teacher is a
network trained on the whole real training set with a recipe; training it takes as long
as an expert, and every evaluation of every set distilled from that data should be read
against the *same* teacher, so it is trained once and cached.

The cache (``<cache_dir>/<sha256 of the key>.npz`` and ``.json``) holds the network's
state dict as plain arrays (read back with ``allow_pickle=False``: no bytes are
unpickled) and a JSON record of the key, the test accuracy and the CRC-32 of the arrays
file. Both are written through a temporary file and an atomic rename, the record last, so
a killed run leaves no entry that reads as whole; an entry whose record, checksum, names
or shapes do not match the network is trained again and replaced.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch

from tesla.adapters.files import atomic_write
from tesla.adapters.torch.augment import DSA
from tesla.adapters.torch.models import build_model
from tesla.adapters.torch.relabel import module_teacher, snapshot_teacher
from tesla.adapters.torch.training import train_expert
from tesla.domain.config import ExpertConfig, ModelConfig, from_dict
from tesla.domain.errors import ConfigError
from tesla.domain.ports import NetworkEpochFn


def cache_key(key: Mapping[str, Any]) -> str:
    """The hex SHA-256 of ``key`` as canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def _crc(path: Path) -> int:
    return zlib.crc32(path.read_bytes())


class TeacherCache:
    """Trained real-data teachers on disk, by key (see the module docstring)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def paths(self, key: Mapping[str, Any]) -> tuple[Path, Path]:
        h = cache_key(key)
        return self.folder / f"{h}.npz", self.folder / f"{h}.json"

    def load(self, key: Mapping[str, Any], model: torch.nn.Module) -> Optional[dict]:
        """Load the entry of ``key`` into ``model``; its record, or None when there is no
        sound entry (missing, damaged, or of another network)."""
        arrays_path, record_path = self.paths(key)
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
            if record.get("key") != json.loads(json.dumps(key, sort_keys=True, default=str)):
                return None
            if _crc(arrays_path) != record.get("crc32"):
                return None
            with np.load(arrays_path, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
        except (OSError, ValueError, KeyError):
            return None
        state = model.state_dict()
        if set(arrays) != set(state) or any(tuple(arrays[k].shape) != tuple(v.shape) for k, v in state.items()):
            return None
        model.load_state_dict({k: torch.from_numpy(np.asarray(a)).to(state[k].dtype) for k, a in arrays.items()})
        return record

    def save(self, key: Mapping[str, Any], model: torch.nn.Module, facts: Mapping[str, Any]) -> Path:
        """Write ``model``'s state dict and the record of ``key`` (record last)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        arrays_path, record_path = self.paths(key)
        arrays = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
        atomic_write(arrays_path, lambda f: np.savez(f, **arrays))
        record = {"key": json.loads(json.dumps(key, sort_keys=True, default=str)), "crc32": _crc(arrays_path),
                  **facts}
        atomic_write(record_path, lambda f: f.write((json.dumps(record, indent=1) + "\n").encode("utf-8")))
        return arrays_path


class TorchTeachers:
    """Teachers on ``device``: expert snapshots from trajectory stores (opened with
    ``open_store(url)``), real-data networks cached under ``cache_dir``."""

    def __init__(self, device: torch.device | str, cache_dir: str | Path, open_store: Any) -> None:
        self.device = device
        self.cache = TeacherCache(cache_dir)
        self.open_store = open_store

    def from_expert(self, url: str, expert: int, epoch: Optional[int], num_classes: int) -> tuple[Any, dict]:
        with self.open_store(url) as store:
            model_cfg = from_dict(ModelConfig, dict(store.meta.model))
            if model_cfg.num_classes != num_classes:
                raise ConfigError(f"{url}: its experts classify {model_cfg.num_classes} classes but the data has "
                                  f"{num_classes}: pass the trajectory store the set was distilled from")
            ids = store.expert_ids()
            if expert not in ids:
                have = f"{ids[0]}..{ids[-1]}" if ids else "none"
                raise ConfigError(f"{url} has no complete expert {expert} (it has {have}): pick one with "
                                  f"--teacher expert:I")
            last = store.num_snapshots(expert) - 1
            at = last if epoch is None else epoch
            if not 0 <= at <= last:
                raise ConfigError(f"expert {expert} of {url} has epochs 0..{last}, not {at}: pass "
                                  f"--teacher expert:{expert}@E with E <= {last}")
            flat = torch.as_tensor(np.asarray(store.load(expert, at)), dtype=torch.float32)
            accs = store.expert_attrs(expert).get("test_accuracy")
        # in training mode, as distillation runs the experts (batch norm from the batch)
        net = build_model(model_cfg, seed=0).to(self.device)
        acc = accs[at] if isinstance(accs, list) and at < len(accs) else None
        return snapshot_teacher(net, flat.to(self.device)), {"model": model_cfg.name, "epoch": at,
                                                             "test_accuracy": acc}

    def from_real(self, model: ModelConfig, data: Any, recipe: ExpertConfig, key: Mapping[str, Any], *,
                  on_epoch: Optional[NetworkEpochFn] = None) -> tuple[Any, dict]:
        net = build_model(model, seed=recipe.seed)
        record = self.cache.load(key, net)
        if record is not None:
            return module_teacher(net.to(self.device)), {"test_accuracy": record.get("test_accuracy"),
                                                         "cached": True}

        def epoch_done(epoch: int, *_: Any) -> None:
            if on_epoch is not None:
                on_epoch(0, epoch)

        history = train_expert(net, data, recipe, seed=recipe.seed, device=self.device,
                               augment=DSA() if recipe.dsa else None, on_epoch=epoch_done)
        acc = float(history[-1])
        self.cache.save(key, net, {"test_accuracy": acc})
        return module_teacher(net), {"test_accuracy": acc, "cached": False}
