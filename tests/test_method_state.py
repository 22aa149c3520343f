"""What a method keeps beyond the student's weights goes into the checkpoint and comes back whole:
the parts with their own optimiser (weights and optimiser state) and the run states (CIRKD's
queues); a checkpoint of another method's parts is refused by name (methods/__init__.py). The
training tests resume such runs end to end; these pin the two adapters themselves."""
import pytest
import torch
import torch.nn as nn

from afdcd_bench.methods import OwnPart, OwnPartsState, RunStates


def _part(seed: int, with_optimizer: bool = True) -> OwnPart:
    torch.manual_seed(seed)
    part = OwnPart(module=nn.Linear(3, 2), make_optimizer=lambda ps: torch.optim.Adam(ps, lr=0.1))
    if with_optimizer:
        part.optimizer = part.make_optimizer(list(part.module.parameters()))
        part.module(torch.randn(1, 3)).pow(2).sum().backward()  # a gradient that differs from seed to seed
        part.optimizer.step()  # Adam's moments are now state worth keeping
    return part


def _same_module(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_own_parts_come_back_with_their_weights_and_optimiser_state():
    saved = OwnPartsState({"adv.discriminator": _part(0), "x.plain": _part(1, with_optimizer=False)})
    state = saved.state_dict()
    assert state["x.plain"]["optimizer"] is None
    fresh = {"adv.discriminator": _part(5), "x.plain": _part(6, with_optimizer=False)}
    assert not _same_module(fresh["adv.discriminator"].module, saved.parts["adv.discriminator"].module)
    OwnPartsState(fresh).load_state_dict(state)
    for name in fresh:
        assert _same_module(fresh[name].module, saved.parts[name].module), name
    got, want = fresh["adv.discriminator"].optimizer.state_dict(), saved.parts["adv.discriminator"].optimizer.state_dict()
    assert got["state"].keys() == want["state"].keys() and got["state"]
    for k in want["state"]:
        for field in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(got["state"][k][field], want["state"][k][field]), (k, field)
    # a part built without an optimiser takes the weights of a checkpoint that has one, and nothing else
    bare = _part(7, with_optimizer=False)
    OwnPartsState({"adv.discriminator": bare}).load_state_dict({"adv.discriminator": state["adv.discriminator"]})
    assert _same_module(bare.module, saved.parts["adv.discriminator"].module) and bare.optimizer is None


def test_own_parts_refuse_a_checkpoint_of_other_parts_naming_both():
    state = OwnPartsState({"adv.discriminator": _part(0)}).state_dict()
    with pytest.raises(ValueError, match=r"holds own parts \['adv.discriminator'\], this method \['other.part'\]"):
        OwnPartsState({"other.part": _part(1)}).load_state_dict(state)
    with pytest.raises(ValueError, match="own parts"):
        OwnPartsState({"adv.discriminator": _part(1), "other.part": _part(2)}).load_state_dict(state)


class _Counter:
    def __init__(self, n: int):
        self.n = n

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, state):
        self.n = state["n"]


def test_run_states_come_back_and_refuse_other_methods_by_name():
    saved = RunStates({"cirkd": _Counter(7), "other": _Counter(3)}).state_dict()
    assert saved == {"cirkd": {"n": 7}, "other": {"n": 3}}
    fresh = {"cirkd": _Counter(0), "other": _Counter(0)}
    RunStates(fresh).load_state_dict(saved)
    assert (fresh["cirkd"].n, fresh["other"].n) == (7, 3)
    with pytest.raises(ValueError, match=r"holds the state of \['cirkd', 'other'\], this method \['cirkd'\]"):
        RunStates({"cirkd": _Counter(0)}).load_state_dict(saved)
