"""Every loss under `torch.compile(fullgraph=True)`: equal to eager, one graph, no recompilation when
`set_epoch` changes the epoch state (DRW's switch, FBL's curriculum), which lives in buffers."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from losses import ModelOutput, build_loss, loss_class, loss_names
from tests.helpers import LOSS_COUNTS as COUNTS
from tests.helpers import loss_output as make_output
from tests.helpers import output_for

# Epochs that change the state: DRW off -> on, FBL's curriculum 0 -> 0.8 -> past 1.
EPOCHS = (0, 170, 199)
# The losses a classifier's ModelOutput feeds (NCL's: tests/test_losses_ncl.py).
NAMES = [n for n in loss_names() if loss_class(n).model == "classifier"]


def _value_and_grads(fn, output, target: torch.Tensor):
    """The loss of fresh leaves of the output's differentiable fields, and its gradients to them (GML's
    output also carries integer and boolean fields, and the teacher's logits, which need none)."""
    fields = [t.detach().requires_grad_() if t is not None and t.requires_grad else t for t in output]
    value = fn(type(output)(*fields), target)
    inputs = [t for t in fields if t is not None and t.requires_grad]
    return value.detach(), torch.autograd.grad(value, inputs, allow_unused=True)


def _assert_compiled_equals_eager(name: str, backend: str) -> None:
    torch._dynamo.reset()
    counters.clear()
    loss = build_loss(name, COUNTS)
    compiled = torch.compile(loss, backend=backend, fullgraph=True)
    output, target = output_for(name, n=8)
    values = []
    for i, epoch in enumerate(EPOCHS):
        loss.set_epoch(epoch, 200)
        expected, expected_grads = _value_and_grads(loss, output, target)
        with torch._dynamo.config.patch(error_on_recompile=i > 0):
            value, grads = _value_and_grads(compiled, output, target)
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-5)
        for got, want in zip(grads, expected_grads, strict=True):
            assert (got is None) == (want is None)
            if want is not None:
                torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-5)  # grads reach s / N = 3.75
        values.append(value.item())
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert not counters["graph_break"]
    if name in ("ce_drw", "dbm_drw", "ldam_drw", "fbl"):  # the epoch state did change the compiled result
        assert values[0] != values[1] and (name != "fbl" or values[1] != values[2])


# Inductor (the real thing) for the two losses the trainer exists for, in the fast tier; every loss is
# traced through dynamo + AOTAutograd there too (cheap), and through Inductor in the slow tier.
@pytest.mark.parametrize("name", ["dbm_drw", "fbl"])
def test_compiled_equals_eager_no_recompile(name):
    _assert_compiled_equals_eager(name, "inductor")


@pytest.mark.parametrize("name", NAMES)
def test_traced_equals_eager_no_recompile(name):
    _assert_compiled_equals_eager(name, "aot_eager")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(NAMES) - {"dbm_drw", "fbl"}))
def test_compiled_equals_eager_no_recompile_all(name):
    _assert_compiled_equals_eager(name, "inductor")


def test_compiled_loss_rejects_another_width_with_its_message():
    # Static shapes, as the trainer compiles: torch 2.11 leaves the message unformatted (its pieces in the
    # debug context) when the shape is symbolic, as automatic dynamic shapes would make it here after the
    # other tests in this file compiled the same forward at another width.
    loss = torch.compile(build_loss("dbm_ce", COUNTS), backend="aot_eager", fullgraph=True, dynamic=False)
    output, target = make_output(c=len(COUNTS) + 1)
    # fullgraph: dynamo wraps the ValueError, whose message it keeps.
    with pytest.raises(Exception, match=r"'dbm_ce' was built for 5 classes and expects logits \[N, 5\]"):
        loss(output, target)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["dbm_drw", "fbl", "ldam_drw"])
def test_cuda_graph_replay_sees_set_epoch(name):
    """A captured step reads the epoch state from the buffers: set_epoch between replays takes effect."""
    loss = build_loss(name, COUNTS).cuda()
    reference = build_loss(name, COUNTS)
    output, target = make_output()
    static = ModelOutput(*(t.detach().cuda() for t in output))
    static_target = target.cuda()
    loss.set_epoch(0, 200)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up off the capture stream, as torch.cuda.graph requires
        for _ in range(2):
            loss(static, static_target)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        value = loss(static, static_target)
    seen = []
    for epoch in EPOCHS:
        loss.set_epoch(epoch, 200)
        reference.set_epoch(epoch, 200)
        graph.replay()
        torch.testing.assert_close(value.cpu(), reference(ModelOutput(*(t.detach() for t in output)), target))
        seen.append(value.item())
    assert seen[0] != seen[1]
