"""``tesla evaluate``'s options become the request the service runs: the protocol's own
defaults, what applies to which protocol, a preset's architectures (no torch)."""

import pytest

from tesla.app.cli.evaluate import build_request
from tesla.domain.config import ConfigError, EvalConfig
from tesla.domain.relabel import RelabelConfig, TeacherChoice

DEFAULTS = dict(synthetic="s.zarr", models=None, num_models=None, epochs=None, lr=None, batch_size=None, dsa=True,
                hard=False, random_real=True, full_real=False, full_epochs=None, dataset=None, data=None, seed=0,
                protocol="mtt", teacher="real", trajectories=None, teacher_epochs=50, temperature=20.0, cutmix=True,
                scores=False, score_weight=0.5, ars_weight=0.5, score_convention="documented", record=None,
                preset=None)


def request(**kw):
    return build_request(**{**DEFAULTS, **kw})


def test_defaults_are_the_published_protocols():
    req = request()
    assert req.protocol == "mtt" and req.cfg == EvalConfig() and req.relabel == RelabelConfig()
    assert req.teacher == TeacherChoice() and req.record is False and req.scores is False


def test_epochs_apply_to_every_network_lr_and_batch_to_the_chosen_protocol():
    mtt = request(epochs=30, lr=0.05, batch_size=64)
    assert (mtt.cfg.epochs, mtt.cfg.lr, mtt.cfg.batch_size) == (30, 0.05, 64)
    assert (mtt.relabel.epochs, mtt.relabel.lr, mtt.relabel.batch_size) == (30, 1e-3, 50)
    rel = request(protocol="relabel", epochs=30, lr=0.002, batch_size=20, temperature=4.0, cutmix=False,
                  teacher="expert:2@10")
    assert (rel.relabel.epochs, rel.relabel.lr, rel.relabel.batch_size) == (30, 0.002, 20)
    assert (rel.relabel.temperature, rel.relabel.cutmix) == (4.0, False)
    assert (rel.cfg.epochs, rel.cfg.lr, rel.cfg.batch_size) == (30, None, 256)  # the hard-label run's mtt settings
    assert rel.teacher == TeacherChoice(kind="expert", expert=2, epoch=10)


def test_scores_record_unless_told_not_to():
    assert request(scores=True).record is True and request(scores=True, record=False).record is False
    assert request(record=True).record is True


def test_a_preset_gives_its_architectures_and_options_still_win():
    req = request(preset="imagenet1k-ipc10")
    assert req.cfg.models == ("convnet", "resnet18") and req.cfg.epochs == 1000
    assert request(preset="imagenet1k-ipc10", models="resnet18", num_models=2).cfg.models == ("resnet18",)
    assert request(preset="demo").cfg.epochs == 300 and request(preset="cifar10-ipc10").cfg.models == ("convnet",)


@pytest.mark.parametrize("kw,match", [({"protocol": "kd"}, "--protocol"), ({"teacher": "mine"}, "--teacher"),
                                      ({"preset": "nope"}, "unknown preset"), ({"models": "mlp"}, "mlp")])
def test_bad_options_are_config_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        request(**kw)
