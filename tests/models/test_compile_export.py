"""torch.compile (fullgraph, forward and backward), compile_steps, torch.export and ONNX.

Sizes are tiny and the compile backend is ``aot_eager`` (dynamo + AOTAutograd, no inductor
code generation): what is tested is that the whole model is captured as one graph, forward
and backward. Inductor compile and run times: ``benchmarks/bench_compile.py``.
"""

from __future__ import annotations

import pytest
import torch

from dualsparse.models import EGRU, GRU, LSTM, compile_steps
from dualsparse.models.lm import RNNLanguageModel

pytestmark = pytest.mark.slow

I, H, T, B = 3, 4, 3, 2
MODELS = {"egru": lambda: EGRU(I, H, num_layers=2, threshold_mean=0.2),
          "gru": lambda: GRU(I, H, num_layers=2), "lstm": lambda: LSTM(I, H, num_layers=2)}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fullgraph_compile_forward_and_backward(name) -> None:
    torch.manual_seed(0)
    rnn = MODELS[name]()
    assert rnn.check_finite  # the NaN check is on, and must not break the graph
    x = torch.randn(T, B, I)
    compiled = torch.compile(rnn, fullgraph=True, backend="aot_eager")
    out, _ = compiled(x)
    out.square().sum().backward()
    got = _grads(rnn)
    rnn.zero_grad()
    ref, _ = rnn(x)
    ref.square().sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    want = _grads(rnn)
    assert got.keys() == want.keys() and got
    for n in got:
        torch.testing.assert_close(got[n], want[n], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="input contains NaN"):  # eager still checks
        rnn(torch.full((T, B, I), float("nan")))


def _lm() -> RNNLanguageModel:
    return RNNLanguageModel(11, 4, [H, 4], cell="egru", dropout=0.1, dropouth=0.1,
                            dropouti=0.1, dropoute=0.1, wdrop=0.1)


def test_fullgraph_compile_of_the_language_model_in_training() -> None:
    torch.manual_seed(0)
    lm = _lm().train()
    tokens = torch.randint(0, 11, (T, B))
    logits, _ = torch.compile(lm, fullgraph=True, backend="aot_eager")(tokens)
    logits.logsumexp(-1).sum().backward()
    assert logits.shape == (T, B, 11)
    assert all(p.grad is not None for p in lm.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="token ids"):  # eager still checks the range
        lm(torch.full((T, B), 11))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_compile_steps_does_not_recompile_for_a_new_length(name) -> None:
    torch.manual_seed(0)
    rnn = MODELS[name]()
    eager = MODELS[name]()
    eager.load_state_dict(rnn.state_dict())
    # imported here, not at collection: torch._dynamo imports triton, whose interpreter mode
    # (tests/triton) is fixed by its first import
    from torch._dynamo.testing import CompileCounterWithBackend

    counter = CompileCounterWithBackend("aot_eager")
    compile_steps(rnn, backend=counter, fullgraph=True)
    frames = None
    for steps in (5, 9, 2):
        x = torch.randn(steps, B, I)
        out, state = rnn(x)
        out.sum().backward()
        ref, _ = eager(x)
        torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
        frames = counter.frame_count if frames is None else frames
        assert counter.frame_count == frames  # 5 -> 9 -> 2 steps: nothing compiled again
    assert 1 <= frames <= 2  # once per layer at most
    assert rnn.weight_hh_l0.grad is not None


def test_compile_steps_refuses_other_modules() -> None:
    with pytest.raises(ValueError, match="module must be"):
        compile_steps(torch.nn.GRU(I, H))


def test_export_egru_and_lm() -> None:
    torch.manual_seed(0)
    rnn = MODELS["egru"]().eval()
    x = torch.randn(T, B, I)
    lm = _lm().eval()
    tokens = torch.randint(0, 11, (T, B))
    with torch.no_grad():
        for model, arg in ((rnn, x), (lm, tokens)):
            program = torch.export.export(model, (arg,))
            got, want = program.module()(arg), model(arg)
            torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-6)
            torch.testing.assert_close(torch.cat([t.reshape(-1) for t in
                                                  torch.utils._pytree.tree_leaves(got[1])]),
                                       torch.cat([t.reshape(-1) for t in
                                                  torch.utils._pytree.tree_leaves(want[1])]))


def test_onnx_export_of_egru_and_lm_runs_in_onnxruntime(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    rnn = MODELS["egru"]().eval()
    x = torch.randn(T, B, I)
    lm = _lm().eval()
    tokens = torch.randint(0, 11, (T, B))
    state_names = ["y_l0", "c_l0", "y_l1", "c_l1"]
    for model, arg, names in ((rnn, x, ["input"]), (lm, tokens, ["tokens"])):
        path = tmp_path / f"{type(model).__name__}.onnx"
        torch.onnx.export(model, (arg,), dynamo=True, input_names=names,
                          output_names=["output", *state_names]).save(str(path))
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == names
        got = session.run(None, {names[0]: arg.numpy()})
        with torch.no_grad():
            want, state = model(arg)
        assert len(got) == 5
        torch.testing.assert_close(torch.from_numpy(got[0]), want, rtol=0, atol=1e-5)
        flat = [t for s in state for t in s]
        for g, w in zip(got[1:], flat, strict=True):
            torch.testing.assert_close(torch.from_numpy(g), w, rtol=0, atol=1e-5)


def test_legacy_torchscript_onnx_export_of_egru_and_lm(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    for model, arg in ((MODELS["egru"]().eval(), torch.randn(T, B, I)),
                       (_lm().eval(), torch.randint(0, 11, (T, B)))):
        path = tmp_path / "legacy.onnx"
        with pytest.warns(DeprecationWarning):  # the TorchScript exporter is deprecated
            torch.onnx.export(model, (arg,), str(path), dynamo=False, input_names=["input"])
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {"input": arg.numpy()})[0]
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(got), model(arg)[0], rtol=0, atol=1e-5)
        path.unlink()


@pytest.mark.parametrize("name", ["egru", "lstm"])
def test_onnx_step_module_runs_any_length(name, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from dualsparse.models.export import StepModule

    torch.manual_seed(0)
    rnn = MODELS[name]().eval()
    step = StepModule(rnn)
    path = tmp_path / "step.onnx"
    torch.onnx.export(step, step.example_inputs(B), dynamo=True, input_names=step.input_names(),
                      output_names=step.output_names()).save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for steps in (2, 7):  # one exported graph, any number of steps
        x = torch.randn(steps, B, I)
        state = [t.numpy() for t in step.example_inputs(B)[1:]]
        ys = []
        for t in range(steps):
            out = session.run(None, {"input": x[t].numpy(),
                                     **dict(zip(step.state_names(), state, strict=True))})
            ys.append(torch.from_numpy(out[0]))
            state = out[1:]
        with torch.no_grad():
            want, final = rnn(x)
        torch.testing.assert_close(torch.stack(ys), want, rtol=0, atol=1e-5)
        torch.testing.assert_close(torch.from_numpy(state[-1]), final[-1][-1], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="state: expected"):
        step(torch.zeros(B, I))
