"""Process groups on ``torch.distributed`` for runs launched by ``torchrun``.

``torchrun --nproc_per_node=N -m tesla <command> --distributed ...`` starts N copies of
the command and tells each who it is through environment variables (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). :func:`process_group`
reads them, joins the group (``nccl`` when the rank runs on a GPU, ``gloo`` on CPU),
pins the rank to ``cuda:LOCAL_RANK`` and always leaves the group cleanly
(``destroy_process_group``), even when the job fails.

What the services need from the group is small and lives on :class:`DistContext`:
summing a tensor over ranks in place (the data gradient of a distillation step), sending
a Python object from rank 0 to all (what rank 0 decided), gathering one object per rank
(errors, results), and a barrier. :func:`single_process` gives the same interface for one
process with no group at all, so services have one code path and tests run without
``torch.distributed``.

Why gather errors before a collective: when one rank fails a check and leaves while the
others wait in a barrier or an all-reduce, they hang until the group's timeout.
:meth:`DistContext.agree` runs a step on every rank and then lets every rank know
whether any failed, so all of them stop together with one message.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
from typing import Any, Callable, Iterator, Mapping, Optional, TypeVar

import attrs
import torch
import torch.distributed as dist

from tesla.domain.errors import UserError
from tesla.domain.experts import split_ids  # noqa: F401  (re-exported: ranks deal experts with it)

T = TypeVar("T")

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
DEFAULT_TIMEOUT_S = 3600  # generous: rank 0 may evaluate or write a large checkpoint meanwhile


class DistributedError(UserError):
    """The process group cannot be set up, or another rank failed (message names which)."""


@attrs.frozen
class LaunchEnv:
    """Who this process is, as ``torchrun`` told it.

    Attributes:
        rank: global rank, 0 .. world - 1.
        world: number of processes in the job.
        local_rank: rank on this node (picks the GPU).
        master_addr, master_port: where rank 0 listens for the rendezvous.
    """

    rank: int
    world: int
    local_rank: int
    master_addr: str
    master_port: int


def launch_env(environ: Optional[Mapping[str, str]] = None) -> LaunchEnv:
    """Read the torchrun variables; DistributedError naming the fix when they are absent."""
    env = os.environ if environ is None else environ
    missing = [k for k in ENV_VARS if not env.get(k)]
    if missing:
        raise DistributedError(f"--distributed needs the torchrun environment ({', '.join(missing)} not set): "
                               "launch with `torchrun --nproc_per_node=N -m tesla ... --distributed`")
    try:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local_rank, port = int(env["LOCAL_RANK"]), int(env["MASTER_PORT"])
    except ValueError:
        raise DistributedError("RANK, WORLD_SIZE, LOCAL_RANK and MASTER_PORT must be integers: "
                               "launch with torchrun") from None
    if world < 1 or not 0 <= rank < world or local_rank < 0:
        raise DistributedError(f"rank {rank} of world {world} (local rank {local_rank}) is not a valid "
                               "position: launch with torchrun")
    return LaunchEnv(rank=rank, world=world, local_rank=local_rank, master_addr=env["MASTER_ADDR"],
                     master_port=port)


def pick_device(name: str, local_rank: int) -> torch.device:
    """``auto``/``cuda`` -> ``cuda:LOCAL_RANK`` (each rank its own GPU); ``cpu`` -> cpu.

    An explicit ``cuda:K`` is kept (the user placed the ranks themselves).
    """
    if name == "cpu":
        return torch.device("cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
        if name == "cpu":
            return torch.device("cpu")
    if not name.startswith("cuda"):
        raise DistributedError(f"device {name!r} cannot be used by a rank: use auto, cpu or cuda")
    if not torch.cuda.is_available():
        raise DistributedError(f"device {name!r} asked for but no CUDA device is available: use --device cpu")
    if name == "cuda":
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise DistributedError(f"local rank {local_rank} has no GPU of its own ({count} visible): "
                                   f"use --nproc_per_node={count} or fewer")
        return torch.device("cuda", local_rank)
    return torch.device(name)


@attrs.frozen
class DistContext:
    """This process's place in the job and the collectives the services use.

    With ``world == 1`` and no group (:func:`single_process`) every collective is the
    identity, so services need no special case.

    Attributes:
        rank, world, local_rank: as launched.
        device: where this rank computes.
        backend: ``nccl``, ``gloo`` or ``none`` (single process).
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = attrs.field(factory=lambda: torch.device("cpu"))
    backend: str = "none"

    @property
    def is_writer(self) -> bool:
        """Rank 0 writes checkpoints, the set, the event log and prints."""
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        return (self.rank, self.world)

    @property
    def active(self) -> bool:
        return self.backend != "none" and dist.is_available() and dist.is_initialized()

    def all_reduce_sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over ranks, in place; every rank gets identical values."""
        if self.active:
            all_reduce_sum_(tensor)
        return tensor

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """``obj`` of rank ``src`` on every rank (pickled; small objects only)."""
        return broadcast_object(obj, src) if self.active else obj

    def all_gather_object(self, obj: Any) -> list:
        """One object per rank, in rank order, on every rank."""
        return all_gather_object(obj) if self.active else [obj]

    def barrier(self) -> None:
        if self.active:
            barrier()

    def agree(self, fn: Callable[[], T], *, only_writer: bool = False) -> Optional[T]:
        """Run ``fn`` (on every rank, or rank 0 only) and stop every rank if any failed.

        The failing rank re-raises its own exception; the others raise
        :class:`DistributedError` naming the rank and its message, so no rank is left
        waiting in a later collective.

        Returns:
            ``fn()``'s value (None on ranks that did not run it).
        """
        value, error, failure = None, None, None
        if self.is_writer or not only_writer:
            try:
                value = fn()
            except Exception as e:  # reported to every rank below, then re-raised here
                error = e
                failure = f"{type(e).__name__}: {e}"
        reports = self.all_gather_object(failure)
        if error is not None:
            mark_reported(error)
            raise error
        for rank, message in enumerate(reports):
            if message is not None:
                raise DistributedError(f"rank {rank} failed: {message}")
        return value


def mark_reported(error: BaseException) -> None:
    """Note on ``error`` that every rank knows of it (rank 0 reports it), so other ranks
    can leave quietly instead of printing the same line N times."""
    try:
        error.reported_to_ranks = True  # type: ignore[attr-defined]
    except AttributeError:  # pragma: no cover - exceptions with __slots__
        pass


def is_reported(error: BaseException) -> bool:
    """True for an error every rank already knows of (:meth:`DistContext.agree`)."""
    return isinstance(error, DistributedError) or bool(getattr(error, "reported_to_ranks", False))


def single_process(device: torch.device | str = "cpu") -> DistContext:
    """The context of a plain run: rank 0 of 1, collectives are no-ops."""
    return DistContext(device=torch.device(device))


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks in place (gloo: CPU or CUDA tensors; nccl: CUDA).

    A CPU tensor in an ``nccl`` group travels through this rank's GPU and back.
    """
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        staged = tensor.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(staged, op=dist.ReduceOp.SUM)
        tensor.copy_(staged)
        return tensor
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_tensor_(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite ``tensor`` on every rank with rank ``src``'s values, in place."""
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        staged = tensor.to(torch.device("cuda", torch.cuda.current_device()))
        dist.broadcast(staged, src=src)
        tensor.copy_(staged)
        return tensor
    dist.broadcast(tensor, src=src)
    return tensor


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank.

    Only our own processes (same job, same code) take part, so the pickle that
    ``broadcast_object_list`` uses carries nothing foreign.
    """
    box = [obj if dist.get_rank() == src else None]
    dist.broadcast_object_list(box, src=src, device=_object_device())
    return box[0]


def all_gather_object(obj: Any) -> list:
    """Every rank's ``obj``, in rank order."""
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _object_device() -> Optional[torch.device]:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return None


def barrier() -> None:
    """Wait for every rank (on the rank's own GPU under nccl)."""
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def init_from_env(device: str = "auto", *, timeout_s: float = DEFAULT_TIMEOUT_S) -> DistContext:
    """Join the group torchrun set up (its environment variables); see
    :func:`process_group` for the clean exit."""
    env = launch_env()
    dev = pick_device(device, env.local_rank)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        # env:// (not tcp://): under torchrun the workers must join the agent's store
        # (TORCHELASTIC_USE_AGENT_STORE) instead of opening a second one on MASTER_PORT
        dist.init_process_group(backend=backend, init_method="env://", rank=env.rank, world_size=env.world,
                                timeout=_dt.timedelta(seconds=timeout_s))
    return DistContext(rank=env.rank, world=env.world, local_rank=env.local_rank, device=dev, backend=backend)


def shutdown() -> None:
    """Leave the group (no barrier: a rank that failed must not wait for the others)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(device: str = "auto", *, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[DistContext]:
    """Join the torchrun group for the ``with`` block and leave it on the way out.

    Example:
        >>> with process_group("auto") as ctx:          # doctest: +SKIP
        ...     grad = ctx.all_reduce_sum_(grad)
    """
    ctx = init_from_env(device, timeout_s=timeout_s)
    try:
        yield ctx
    except BaseException:
        shutdown()  # a failing rank leaves at once: it must not wait for the others
        raise
    # a rank that finished leaves together with the others: a rank tearing its group down
    # while rank 0 still writes the set can abort in the transport ("terminate called
    # without an active exception")
    if ctx.world > 1:
        barrier()
    shutdown()


__all__ = [
    "DistContext", "DistributedError", "mark_reported", "is_reported", "LaunchEnv", "launch_env", "split_ids", "pick_device", "single_process",
    "all_reduce_sum_", "broadcast_tensor_", "broadcast_object", "all_gather_object", "barrier", "init_from_env",
    "shutdown", "process_group",
]
