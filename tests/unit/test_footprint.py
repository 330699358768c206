"""The memory a job needs at least, from its configs alone (:mod:`tesla.domain.footprint`),
and the refusal of what cannot fit, naming the number and the fix."""

from __future__ import annotations

import math
from typing import Optional

import pytest

from tesla.domain.config import DistillConfig, ExpertConfig, ModelConfig
from tesla.domain.errors import ResourceError
from tesla.domain.footprint import (FLOAT, Footprint, Part, check_fits, convnet_params, distill_footprint,
                                    experts_footprint, prepare_footprint)

GiB = 2**30


class FakeMemory:
    """A machine with ``host`` bytes free (and ``device`` bytes on ``name`` when not the CPU)."""

    def __init__(self, host: Optional[int] = None, device: Optional[int] = None, name: str = "cpu") -> None:
        self.device, self._host, self._device = name, host, device

    def free_device(self) -> Optional[int]:
        return self._device

    def free_host(self) -> Optional[int]:
        return self._host


def test_convnet_parameters_by_hand():
    # depth 1, width 4, 1 channel, 8 px, 2 classes, instance norm: conv 1*4*9 + 4, norm 2*4, linear 4*4*4*2 + 2
    small = ModelConfig(depth=1, width=4, channels=1, image_size=8, num_classes=2)
    assert convnet_params(small) == 36 + 4 + 8 + 128 + 2
    assert convnet_params(ModelConfig(depth=1, width=4, channels=1, image_size=8, num_classes=2, norm="none")) == 170
    # the paper's ConvNetD3 on CIFAR-10: 320,010 parameters
    assert convnet_params(ModelConfig()) == 320_010
    assert convnet_params(ModelConfig(arch="resnet18", image_size=32)) is None


def test_the_exact_engine_keeps_n_weight_vectors_or_about_2_sqrt_n():
    model = ModelConfig(depth=2, width=8, image_size=16)
    p = 2130
    n = 10_000
    exact = distill_footprint(DistillConfig(ipc=1, syn_steps=n, engine="exact"), model, p)
    kept = [x for x in exact.parts if "stored student weight" in x.what]
    assert kept[0].bytes == n * p * FLOAT and "--remake-weights" in kept[0].fix
    remade = distill_footprint(DistillConfig(ipc=1, syn_steps=n, engine="exact", remake_weights=True), model, p)
    kept = [x for x in remade.parts if "stored student weight" in x.what]
    assert kept[0].bytes == 2 * math.ceil(math.sqrt(n)) * p * FLOAT
    tesla = distill_footprint(DistillConfig(ipc=1, syn_steps=n), model, p)
    assert not [x for x in tesla.parts if "stored" in x.what]  # constant in the steps: pass 2 remakes them
    offloaded = distill_footprint(DistillConfig(ipc=1, syn_steps=n, engine="exact", offload_weights=True), model, p)
    assert offloaded.total(on_device=False) > offloaded.total(on_device=True)  # the weights moved to the host


def test_the_set_its_gradient_and_momentum_grow_with_ipc():
    model = ModelConfig(depth=2, width=8, image_size=16)
    one = distill_footprint(DistillConfig(ipc=1, batch_syn=1), model, 2130)
    many = distill_footprint(DistillConfig(ipc=1000, batch_syn=1), model, 2130)
    assert many.total() - one.total() == 3 * 999 * 10 * 3 * 16 * 16 * FLOAT


def test_what_cannot_fit_is_refused_naming_the_number_the_largest_part_and_its_fix():
    model = ModelConfig(depth=2, width=8, image_size=16)
    absurd = distill_footprint(DistillConfig(ipc=1, syn_steps=10**9, engine="exact"), model, 2130)
    with pytest.raises(ResourceError) as info:
        check_fits(absurd, FakeMemory(host=16 * GiB))
    msg = str(info.value)
    assert msg.startswith("this job needs at least 8,195.6 GiB") and "GiB of memory on the host but 16.0 GiB is free" in msg
    assert "1,000,000,000 stored student weight vectors of the exact engine" in msg
    assert msg.endswith("lower --syn-steps or pass --remake-weights")
    check_fits(distill_footprint(DistillConfig(ipc=10), model, 2130), FakeMemory(host=16 * GiB))  # fits
    check_fits(absurd, FakeMemory())  # nothing known: nothing refused


def test_on_a_device_its_parts_and_the_hosts_are_checked_apart():
    fp = Footprint((Part("set", 10 * GiB, "lower --ipc"), Part("plans", 3 * GiB, "lower --syn-steps", on_device=False)))
    check_fits(fp, FakeMemory(host=4 * GiB, device=11 * GiB, name="cuda:0"))
    with pytest.raises(ResourceError, match="on cuda:0 but 9.0 GiB is free; the largest part is set"):
        check_fits(fp, FakeMemory(host=64 * GiB, device=9 * GiB, name="cuda:0"))
    with pytest.raises(ResourceError, match="on the host but 2.0 GiB is free; the largest part is plans"):
        check_fits(fp, FakeMemory(host=2 * GiB, device=64 * GiB, name="cuda:0"))
    with pytest.raises(ResourceError, match="13.0 GiB of memory on the host"):  # the CPU holds both
        check_fits(fp, FakeMemory(host=12 * GiB))


def test_experts_and_prepare_footprints():
    wide = ModelConfig(depth=2, width=100_000, image_size=16)
    fp = experts_footprint(wide, ExpertConfig(parallel=2))
    assert fp.total() == 2 * 4 * convnet_params(wide) * FLOAT and "--parallel" in fp.parts[0].fix
    assert experts_footprint(ModelConfig(arch="vit", image_size=32), ExpertConfig()).total() == 0
    # a block or a chunk never holds more than the source's images
    assert prepare_footprint(64, chunk=1024, block=8192, images=100).total() == 2 * 100 * 3 * 64 * 64
    big = prepare_footprint(100_000, chunk=16, block=128, images=8)
    with pytest.raises(ResourceError, match="a sort block of 8 images of 100000 px .*lower --image-size"):
        check_fits(big, FakeMemory(host=64 * GiB))
