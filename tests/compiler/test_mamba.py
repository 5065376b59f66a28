"""Mamba-1's mixer: the chunked parallel scan is the recurrence (values and gradients), its memory
does not grow with the sequence times the state, the recurrent state continues a sequence exactly,
and the mixer is transformers' MambaMixer (same weights in, same outputs)."""

from __future__ import annotations

import pytest
import torch

from tabula.compiler.blocks.init import WeightInit
from tabula.compiler.blocks.mamba import Mixer
from tabula.compiler.blocks.selective_scan import reference_scan, selective_scan
from tabula.schemas.blocks.mamba import MambaMixer
from tabula.schemas.init import GPT2Init


def scan_inputs(batch=2, T=37, E=6, N=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, dt = torch.randn(batch, T, E, generator=g), torch.rand(batch, T, E, generator=g)
    A = -torch.rand(E, N, generator=g) * 4  # decays from near 1 to e^-4 a step
    B, C, h0 = torch.randn(batch, T, N, generator=g), torch.randn(batch, T, N, generator=g), torch.randn(batch, E, N, generator=g)
    return x, dt, A, B, C, h0


@pytest.mark.parametrize("chunk", [1, 5, 16, 64])
def test_the_chunked_scan_is_the_recurrence_values_and_gradients(chunk):
    inputs = scan_inputs()

    def run(scan, **kw):
        leaves = [t.clone().requires_grad_() for t in inputs]
        y, h = scan(*leaves, **kw)
        (y.square().sum() + (h * 3).sum()).backward()
        return y, h, [leaf.grad for leaf in leaves]

    y, h, grads = run(selective_scan, chunk=chunk)
    y_ref, h_ref, grads_ref = run(reference_scan)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-5)
    for name, got, want in zip("x dt A B C h0".split(), grads, grads_ref):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, msg=lambda m, n=name: f"d{n}: {m}")


def test_the_scans_memory_grows_with_the_sequence_not_with_the_sequence_times_the_state():
    """Peak memory of a forward and backward at 4x the tokens grows by far less than one state
    (E x N numbers) a token: the scan keeps one state a chunk, and one chunk's states at a time."""
    from torch.distributed._tools.mem_tracker import MemTracker

    E, N = 16, 64

    def peak(T):
        leaves = [t.requires_grad_() for t in scan_inputs(batch=1, T=T, E=E, N=N)]
        tracker = MemTracker()
        with tracker:
            y, _ = selective_scan(*leaves, chunk=16)
            y.sum().backward()
        return tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]

    grown_per_token = (peak(256) - peak(64)) / (256 - 64)
    assert grown_per_token < E * N * 4 / 2, grown_per_token  # a full (T, E, N) tensor alone would be E N 4 a token


def mixer(spec=None, d_model=32, std=0.3):
    spec = spec or MambaMixer(d_state=8, chunk=8)
    module = Mixer.build(spec, d_model)
    module.init_weights(WeightInit(GPT2Init(std=std), seed=1, n_layers=2))  # a large std: outputs far from zero
    return module.eval()


def test_the_state_continues_a_sequence_exactly():
    """A prompt through forward(state), then one token at a time through the recurrent step, gives
    the outputs of the whole sequence at once; so does a token at a time from the start."""
    m, x = mixer(), torch.randn(2, 21, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        whole = m(x)
        state = m.empty_state(2, "cpu")
        parts = [m(x[:, :13], state)] + [m(x[:, t : t + 1], state) for t in range(13, 21)]
        torch.testing.assert_close(torch.cat(parts, dim=1), whole, rtol=1e-4, atol=1e-4)
        state = m.empty_state(2, "cpu")
        steps = [m(x[:, t : t + 1], state) for t in range(21)]
        torch.testing.assert_close(torch.cat(steps, dim=1), whole, rtol=1e-4, atol=1e-4)
    assert state.conv.shape == (2, 64, 3) and state.ssm.shape == (2, 64, 8)


def test_the_mixer_is_transformers_mamba_mixer():
    transformers = pytest.importorskip("transformers")
    from transformers.models.mamba.modeling_mamba import MambaMixer as HFMixer

    spec = MambaMixer(d_state=8, dt_rank=3, conv_bias=True, bias=True, chunk=8)
    ours = mixer(spec)
    with torch.no_grad():
        for param in (ours.in_proj.bias, ours.out_proj.bias, ours.conv1d.bias, ours.D):
            param.uniform_(-0.5, 0.5)
    dims = spec.dims(32)
    config = transformers.MambaConfig(hidden_size=32, state_size=8, expand=2, conv_kernel=dims.d_conv, time_step_rank=3,
                                      use_bias=True, use_conv_bias=True, num_hidden_layers=1, vocab_size=11)
    theirs = HFMixer(config, layer_idx=0).eval()
    theirs.load_state_dict(Mixer.hf.tensors(spec, ours.state_dict()), strict=True)
    x = torch.randn(2, 19, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-4)


def test_a_and_d_take_no_weight_decay_in_a_model_built_on_the_meta_device():
    from compiler_specs import tiny_spec

    from tabula.compiler import build_model
    from tabula.runtime.optimizers import param_groups

    model = build_model(tiny_spec(layers=[{"start": 0, "stop": 1, "block": {"kind": "mamba"}}])).materialize("cpu", 0)
    names = {id(p): name for name, p in model.named_parameters()}
    groups = {g["name"]: {names[id(p)] for p in g["params"]} for g in param_groups(model, 0.1)}
    assert {"blocks.0.mixer.A_log", "blocks.0.mixer.D"} <= groups["no_decay"]
    assert {"blocks.0.mixer.x_proj.weight", "blocks.0.mixer.conv1d.weight"} <= groups["decay"]
