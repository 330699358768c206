"""``tesla distill --engine exact --remake-weights`` gives the run of ``--engine exact``.

Remaking the student's weights during the backward sweep (about 2 sqrt(N) kept instead of
N) changes memory, never the numbers: the same synthetic set comes out, to rounding.
"""

from __future__ import annotations

import numpy as np
import pytest

from tesla.adapters.stores.synthetic import open_synthetic_store
from tests.faults.common import one_thread, distill_args, fake_trajectory_store, invoke  # noqa: F401 - autouse fixture


@pytest.fixture(scope="module")
def traj(tmp_path_factory) -> str:
    return fake_trajectory_store(tmp_path_factory.mktemp("weights") / "t.zarr")


def _final_set(url):
    with open_synthetic_store(str(url), "r") as s:
        return s.read_set()


def test_remade_weights_give_the_same_run(traj, tmp_path):
    runs = {}
    for name, extra in (("kept", []), ("remade", ["--remake-weights"])):
        out = tmp_path / name
        res = invoke(distill_args(traj, out, "--engine", "exact", "--syn-steps", "5", "--iterations", "4", *extra))
        assert res.exit_code == 0, res.output
        runs[name] = _final_set(out / "synthetic.zarr")
    np.testing.assert_allclose(runs["remade"].images, runs["kept"].images, rtol=1e-5, atol=1e-6)
    assert runs["remade"].lr == pytest.approx(runs["kept"].lr, rel=1e-6)


def test_remake_weights_with_another_engine_is_refused(traj, tmp_path):
    res = invoke(distill_args(traj, tmp_path / "run", "--engine", "tesla", "--remake-weights"))
    assert res.exit_code == 2 and "--engine exact" in res.output
    assert not (tmp_path / "run").exists()
