"""The adapters implement the ports the services are written against, member by member.

A protocol is only a contract if every implementation has every member it declares;
structural typing checks nothing at run time, so this test does. The fakes of
``tests/unit/fakes.py`` are held to the same contract, so a unit test cannot pass on a
fake that the real adapter does not match.
"""

from __future__ import annotations

import pytest

from tesla.domain import ports


def _members(protocol: type) -> set[str]:
    names = set(getattr(protocol, "__annotations__", {}))
    for klass in protocol.__mro__:
        if klass in (object,) or klass.__name__ in ("Protocol", "Generic"):
            continue
        names |= {n for n, v in vars(klass).items() if not n.startswith("_") and (callable(v) or
                                                                                isinstance(v, property))}
        names |= set(getattr(klass, "__annotations__", {}))
    if "__call__" in vars(protocol):
        names.add("__call__")
    return names


def _implementations():
    from tesla.adapters.data.base import ImageSet
    from tesla.adapters.data.prepared import PreparedImages
    from tesla.adapters.files import LocalRunFiles
    from tesla.adapters.stores.set_store import SyntheticSetStore
    from tesla.adapters.stores.trajectory import TrajectoryStore
    from tesla.adapters.torch.batched import BatchedTorchCompute
    from tesla.adapters.torch.compute import TorchCompute
    from tesla.adapters.torch.ranks import TorchRanks
    from tesla.adapters.torch.student import TorchGauges, TorchStudent
    from tesla.app.bootstrap import RunEvaluator, TorchParts
    from tesla.app.services.run import AgreedCancel, FollowerStore
    from tests.unit import fakes

    return [
        (ports.Compute, TorchCompute), (ports.Compute, fakes.QuadraticCompute),
        (ports.KeepsWeights, TorchCompute), (ports.BatchedVJP, BatchedTorchCompute),
        (ports.Trajectories, TrajectoryStore), (ports.Trajectories, fakes.FakeTrajectories),
        (ports.DataSource, ImageSet), (ports.DataSource, PreparedImages),
        (ports.SetStore, SyntheticSetStore), (ports.SetStore, FollowerStore), (ports.SetStore, fakes.FakeSetStore),
        (ports.Student, TorchStudent), (ports.Student, fakes.FakeStudent),
        (ports.Gauges, TorchGauges), (ports.Gauges, ports.NoGauges),
        (ports.Ranks, TorchRanks), (ports.Ranks, ports.SingleProcess), (ports.Ranks, fakes.FakeRanks),
        (ports.RunFiles, LocalRunFiles), (ports.RunFiles, fakes.FakeRunFiles),
        (ports.DistillParts, TorchParts), (ports.DistillParts, fakes.FakeParts),
        (ports.Evaluator, RunEvaluator), (ports.Cancel, AgreedCancel), (ports.Cancel, fakes.StopAfter),
        *_evaluation_ports(),
    ]


def _evaluation_ports():
    """The evaluation and export ports: torch adapters, stores and the services' fakes."""
    from tesla.adapters.stores.export import SetExportOnDisk
    from tesla.adapters.torch.teachers import TorchTeachers
    from tesla.adapters.torch.trainers import TorchEvaluationTraining, TorchRelabelTraining
    from tests.unit import service_fakes as sf

    return [
        (ports.EvaluationTraining, TorchEvaluationTraining), (ports.EvaluationTraining, sf.FakeEvaluationTraining),
        (ports.RelabelTraining, TorchRelabelTraining), (ports.RelabelTraining, sf.FakeRelabelTraining),
        (ports.Teachers, TorchTeachers), (ports.Teachers, sf.FakeTeachers),
        (ports.RecordEvaluation, sf.FakeRecord), (ports.SetExporter, SetExportOnDisk),
    ]


def _instance_members(impl: type) -> set[str]:
    """Members an instance has: the class's, and what ``__init__`` assigns to ``self``."""
    import ast
    import inspect
    import textwrap

    names = {n for n in dir(impl) if not n.startswith("__") or n == "__call__"}
    for klass in impl.__mro__:
        init = vars(klass).get("__init__")
        if init is None or not hasattr(init, "__code__"):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(init)))
        except (OSError, TypeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and \
                    isinstance(node.value, ast.Name) and node.value.id == "self":
                names.add(node.attr)
    return names


@pytest.mark.parametrize("protocol,impl", _implementations(), ids=lambda x: getattr(x, "__name__", str(x)))
def test_the_implementation_has_every_member_of_its_port(protocol, impl):
    missing = sorted(_members(protocol) - _instance_members(impl))
    assert missing == [], f"{impl.__name__} lacks {missing} of {protocol.__name__}"


def test_optional_capabilities_are_found_by_isinstance():
    from tesla.adapters.torch.batched import BatchedTorchCompute
    from tests.unit.fakes import QuadraticCompute, V

    assert isinstance(QuadraticCompute([V([1.0])]), ports.Compute)
    assert not isinstance(QuadraticCompute([V([1.0])]), ports.KeepsWeights | ports.BatchedVJP)
    assert issubclass(BatchedTorchCompute, ports.BatchedVJP) and issubclass(BatchedTorchCompute, ports.KeepsWeights)
