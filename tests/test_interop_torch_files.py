"""Reading torch.save state dicts: wrappers, key prefixes, refusal of anything that is not plain tensors."""

from __future__ import annotations

import pytest
import torch

from shufflenet.interop import load_torch_state_dict, unwrap_state_dict

STATE = {
    "a.weight": torch.ones(2, 3),
    "a.bias": torch.zeros(2),
    "bn.num_batches_tracked": torch.tensor(4),
}


@pytest.mark.parametrize(
    "wrapped",
    [
        STATE,
        {"state_dict": STATE},
        {"model": STATE, "epoch": 3, "optimizer": {"lr": 0.1}},
        {"model_state_dict": STATE, "epoch": 3},
        {"state_dict": {f"module.{k}": v for k, v in STATE.items()}},
        {f"_orig_mod.{k}": v for k, v in STATE.items()},
        {"checkpoint": 1, "state_dict": {"model": STATE}},
    ],
)
def test_wrappers_and_prefixes_are_removed(wrapped, tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save(wrapped, path)
    state = load_torch_state_dict(path)
    assert list(state) == list(STATE)
    for k, v in STATE.items():
        assert torch.equal(state[k], v)


def test_prefix_only_removed_when_on_every_key():
    mixed = {"module.a": torch.zeros(1), "b": torch.zeros(1)}
    assert list(unwrap_state_dict(mixed)) == ["module.a", "b"]


def test_not_a_state_dict(tmp_path):
    with pytest.raises(ValueError, match="not a state dict"):
        unwrap_state_dict({"a": torch.zeros(1), "b": 3})
    with pytest.raises(ValueError, match="no state dict"):
        unwrap_state_dict([torch.zeros(1)])
    with pytest.raises(ValueError, match="no state dict"):
        unwrap_state_dict({})
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a torch file")
    with pytest.raises(ValueError, match="garbage.pth"):
        load_torch_state_dict(garbage)
    with pytest.raises(FileNotFoundError):
        load_torch_state_dict(tmp_path / "missing.pth")
