"""Import of published MTT/TESLA buffers (replay_buffer_<N>.pt) written here with torch.save."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tesla.adapters.stores import StoreError, open_trajectory_store  # noqa: E402
from tesla.adapters.stores.mtt import buffer_files, import_mtt  # noqa: E402

SHAPES = [(4, 1, 3, 3), (4,), (2, 16), (2,)]


def _trajectory(gen: torch.Generator, snapshots: int, shapes=SHAPES) -> list:
    return [[torch.randn(s, generator=gen) for s in shapes] for _ in range(snapshots)]


def _flat(snapshot: list) -> np.ndarray:
    return torch.cat([t.reshape(-1) for t in snapshot]).numpy()


def _write_buffers(folder, counts=(2, 1), snapshots=3, shapes=SHAPES, numbers=None, seed=0) -> list:
    """One buffer file per entry of ``counts`` (trajectories per file); returns them in file order."""
    gen = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for n, count in zip(numbers or range(len(counts)), counts):
        trajectories = [_trajectory(gen, snapshots, shapes) for _ in range(count)]
        torch.save(trajectories, folder / f"replay_buffer_{n}.pt")
        written.append(trajectories)
    return written


@pytest.mark.parametrize("name", ["experts.h5", "experts.zarr"])
def test_import_round_trip(tmp_path, name):
    src = tmp_path / "buffers"
    # 10 sorts after 2 by number, not by name
    written = _write_buffers(src, counts=(2, 1, 1), numbers=[0, 10, 2])
    (src / "notes.txt").write_text("ignored")
    order = [written[0], written[2], written[1]]  # files 0, 2, 10
    seen = []
    ids = import_mtt(str(src), str(tmp_path / name), dataset={"name": "cifar10", "zca": True},
                     on_expert=lambda i, f, j: seen.append((i, f, j)))
    assert ids == [0, 1, 2, 3]
    assert [s[1:] for s in seen] == [("replay_buffer_0.pt", 0), ("replay_buffer_0.pt", 1),
                                     ("replay_buffer_2.pt", 0), ("replay_buffer_10.pt", 0)]
    with open_trajectory_store(str(tmp_path / name), "r") as store:
        meta = store.meta
        assert meta.layout == [[f"p{i}", list(s)] for i, s in enumerate(SHAPES)]
        assert meta.num_params == 36 + 4 + 32 + 2 and meta.model == {} and meta.dataset["name"] == "cifar10"
        flat = [traj for file in order for traj in file]
        for i, traj in enumerate(flat):
            assert store.num_snapshots(i) == 3
            for e, snapshot in enumerate(traj):
                np.testing.assert_array_equal(store.load(i, e), _flat(snapshot))
            a = store.expert_attrs(i)
            assert a["imported"] == "mtt" and a["test_accuracy"] == [None] * 3


def test_import_appends_and_checks_shapes(tmp_path):
    src = tmp_path / "a"
    _write_buffers(src, counts=(1,))
    url = str(tmp_path / "experts.zarr")
    assert import_mtt(str(src), url) == [0]
    skipped: list = []
    # the same buffers again: nothing doubled, each trajectory named as already there
    assert import_mtt(str(src), url, on_skip=lambda *a: skipped.append(a)) == []
    assert skipped == [(0, "replay_buffer_0.pt", 0)]
    more = tmp_path / "more"
    _write_buffers(more, counts=(1,), seed=1)
    assert import_mtt(str(more), url) == [1]  # other trajectories append
    other = tmp_path / "b"
    _write_buffers(other, counts=(1,), shapes=[(3, 3), (3,)])
    with pytest.raises(StoreError, match="use a new store path"):
        import_mtt(str(other), url)
    # an open store object works too
    third = tmp_path / "third"
    _write_buffers(third, counts=(1,), seed=2)
    with open_trajectory_store(url, "a") as store:
        assert import_mtt(str(third), store) == [2]
        assert store.expert_ids() == [0, 1, 2]


class Sneaky:
    """Not a tensor: a weights_only load must refuse it rather than unpickle it."""

    def __reduce__(self):
        return (print, ("this must never run",))


def test_non_tensor_pickle_is_refused(tmp_path, capsys):
    src = tmp_path / "buffers"
    src.mkdir()
    torch.save([[[torch.zeros(2)], [torch.zeros(2)]], Sneaky()], src / "replay_buffer_0.pt")
    with pytest.raises(StoreError, match="refused to load") as info:
        import_mtt(str(src), str(tmp_path / "x.h5"))
    assert "replay_buffer_0.pt" in str(info.value)
    assert "this must never run" not in capsys.readouterr().out


def test_bad_sources_are_refused(tmp_path):
    with pytest.raises(StoreError, match="not a folder"):
        import_mtt(str(tmp_path / "nope"), str(tmp_path / "x.h5"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="no replay_buffer"):
        buffer_files(str(tmp_path / "empty"))
    bad = tmp_path / "bad"
    bad.mkdir()
    torch.save({"not": "a list"}, bad / "replay_buffer_0.pt")
    with pytest.raises(StoreError, match="not a list of trajectories"):
        import_mtt(str(bad), str(tmp_path / "y.h5"))
    (bad / "replay_buffer_0.pt").write_bytes(b"garbage")
    with pytest.raises(StoreError, match="replay_buffer_0.pt"):
        import_mtt(str(bad), str(tmp_path / "z.h5"))
    torch.save([[[torch.zeros(2)], [torch.zeros(3)]]], bad / "replay_buffer_0.pt")
    with pytest.raises(StoreError, match="shapes differ"):
        import_mtt(str(bad), str(tmp_path / "w.h5"))


def test_import_with_model_uses_its_names(tmp_path):
    models = pytest.importorskip("tesla.adapters.torch.models")
    from tesla.adapters.torch.functional import FlatView
    from tesla.domain.config import ModelConfig, to_dict

    cfg = ModelConfig(arch="convnet", depth=1, width=4, channels=1, image_size=8, num_classes=2)
    view = FlatView(models.build_model(cfg, seed=0))
    shapes = [tuple(s) for _, s in view.layout]
    src = tmp_path / "buffers"
    written = _write_buffers(src, counts=(1,), shapes=shapes)
    url = str(tmp_path / "experts.h5")
    assert import_mtt(str(src), url, to_dict(cfg)) == [0]
    with open_trajectory_store(url, "r") as store:
        assert store.meta.layout == [[n, list(s)] for n, s in view.layout]
        assert store.meta.model == to_dict(cfg)
        np.testing.assert_array_equal(store.load(0, 2), _flat(written[0][0][2]))
        store.check_compatible(to_dict(cfg), view.layout, view.num_params)
    wrong = ModelConfig(arch="convnet", depth=1, width=8, channels=1, image_size=8, num_classes=2)
    with pytest.raises(StoreError, match="pass the model the buffer was trained with"):
        import_mtt(str(src), str(tmp_path / "other.h5"), to_dict(wrong))


def test_a_bad_file_after_good_ones_writes_nothing(tmp_path):
    """Every file is checked before the store is opened: a refusal leaves no store (or
    the existing store as it was)."""
    src = tmp_path / "buffers"
    _write_buffers(src, counts=(2, 1))
    torch.save([[[torch.zeros(2)], [torch.zeros(3)]]], src / "replay_buffer_7.pt")  # last in order, bad shapes
    url = tmp_path / "experts.zarr"
    with pytest.raises(StoreError, match="replay_buffer_7.pt"):
        import_mtt(str(src), str(url))
    assert not url.exists()
    # into an existing store: it keeps exactly what it held
    good = tmp_path / "good"
    _write_buffers(good, counts=(1,), seed=3)
    assert import_mtt(str(good), str(url)) == [0]
    before = sorted((p.relative_to(url), p.stat().st_size, p.stat().st_mtime_ns) for p in url.rglob("*"))
    with pytest.raises(StoreError, match="replay_buffer_7.pt"):
        import_mtt(str(src), str(url))
    assert sorted((p.relative_to(url), p.stat().st_size, p.stat().st_mtime_ns) for p in url.rglob("*")) == before


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_buffers_are_refused_before_any_write(tmp_path, bad):
    src = tmp_path / "buffers"
    written = _write_buffers(src, counts=(2,))
    written[0][1][2][0][0, 0, 0, 0] = bad  # file 0, trajectory 1, snapshot 2, first tensor
    torch.save(written[0], src / "replay_buffer_0.pt")
    url = tmp_path / "experts.h5"
    with pytest.raises(StoreError, match="replay_buffer_0.pt: trajectory 1 snapshot 2: holds NaN or infinite"):
        import_mtt(str(src), str(url))
    assert not url.exists()
