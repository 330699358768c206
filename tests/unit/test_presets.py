"""Presets reproduce the published runs: with our factor-2 image gradient that is half
the paper's lr_img (published TESLA's image gradient was half its formula)."""

import pytest

from tesla.domain import presets
from tesla.domain.config import ConfigError

PUBLISHED = {"cifar10": 1000.0, "cifar100": 1000.0, "imagenet64": 10000.0}


@pytest.mark.parametrize("name", sorted(n for n in presets.PRESETS if n != "demo"))
def test_every_published_row_defaults_to_half_the_papers_lr_img(name):
    p = presets.get(name)
    assert p.published_lr_img == PUBLISHED[p.dataset]
    assert p.effective_lr_img == p.published_lr_img / 2
    assert p.distill.lr_img == p.effective_lr_img
    note = p.lr_img_note
    assert f"{p.published_lr_img:g}" in note and f"{p.effective_lr_img:g}" in note and name in note


def test_the_paper_table_is_otherwise_unchanged():
    p = presets.get("cifar10-ipc10")
    d = p.distill
    assert (d.syn_steps, d.expert_epochs, d.max_start_epoch, d.batch_syn, d.lr_lr, d.lr_init) == (30, 2, 20, None, 1e-5,
                                                                                                  0.01)
    assert d.lr_img == 500.0 and presets.get("imagenet1k-ipc1").distill.lr_img == 5000.0
    # the presets keep the paper's recipe: none of the newer levers is switched on
    assert (d.sampling, d.ema_decay, d.match_fraction, d.labels) == ("uniform", None, 1.0, "hard")


def test_demo_is_not_a_published_row_and_keeps_its_lr_img():
    p = presets.get("demo")
    assert p.published_lr_img is None and p.effective_lr_img is None
    assert p.distill.lr_img == 100.0 and "not a published row" in p.lr_img_note


def test_unknown_preset():
    with pytest.raises(ConfigError, match="cifar10-ipc7"):
        presets.get("cifar10-ipc7")
