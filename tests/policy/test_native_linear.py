"""How the native engine runs one linear layer: the product's forms (F.linear, the transposed
product, oneDNN's packed weights) and peft LoRA layers."""

from __future__ import annotations

import pytest
import torch

from leafe.policy import native_linear


@pytest.fixture(params=[True, False], ids=["packed", "unpacked"])
def packed(request):
    """oneDNN copies of weights, on (where this PyTorch has oneDNN's linear) and off."""
    weights = native_linear.PackedWeights()
    if request.param and not weights.enabled:
        pytest.skip("this PyTorch build has no oneDNN linear")
    weights.enabled = request.param
    return weights


@pytest.mark.parametrize("rows", [1, 2, 7, 15, 16, 128, 129, 300])
@pytest.mark.parametrize("with_bias", [False, True])
def test_linear_is_the_layer_s_product_at_every_row_count(rows, with_bias, packed):
    """Every form linear picks (F.linear, the transposed product, oneDNN's packed linear) gives
    the layer's output; the packed form is the one used from PACKED_LINEAR_MIN_ROWS rows on."""
    generator = torch.Generator().manual_seed(rows)
    weight = torch.randn(96, 64, generator=generator)
    bias = torch.randn(96, generator=generator) if with_bias else None
    x = torch.randn(rows, 64, generator=generator)
    out = native_linear.linear(x, weight, bias, packed=packed)
    expected = torch.nn.functional.linear(x, weight, bias)
    assert out.shape == (rows, 96) and out.is_contiguous()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    used = packed.enabled and rows >= native_linear.PACKED_LINEAR_MIN_ROWS
    assert (id(weight) in packed._entries) == used
    if rows == 1 or (not used and rows > native_linear.TRANSPOSED_LINEAR_ROWS):
        assert torch.equal(out, expected)  # F.linear itself


@pytest.mark.parametrize("rows", [1, 4])
def test_a_layer_as_wide_as_an_lm_head_runs_packed_at_any_row_count(rows, packed):
    weight = torch.randn(native_linear.PACKED_LINEAR_MIN_OUT, 64)
    x = torch.randn(rows, 64)
    out = native_linear.linear(x, weight, packed=packed)
    torch.testing.assert_close(out, torch.nn.functional.linear(x, weight), rtol=1e-5, atol=1e-5)
    assert (id(weight) in packed._entries) == packed.enabled


def test_the_packed_copy_is_remade_when_its_weight_changes(packed):
    """An in-place update (an optimizer step), new storage, or an update of a module weight that
    is a view of a fused tensor: the next pass uses the new values, not a stale copy."""
    torch.manual_seed(0)
    x = torch.randn(32, 64)
    layer = torch.nn.Linear(64, 96, bias=False)
    weight = layer.weight
    with torch.inference_mode():
        first = native_linear.linear(x, weight, packed=packed)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.5)
    layer(x).square().sum().backward()
    optimizer.step()  # in place: the version counter moves
    with torch.inference_mode():
        torch.testing.assert_close(native_linear.linear(x, weight, packed=packed), x @ weight.detach().t(), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(native_linear.linear(x, weight, packed=packed), first)
    weight.data = torch.randn(96, 64)  # new storage
    with torch.inference_mode():
        torch.testing.assert_close(native_linear.linear(x, weight, packed=packed), x @ weight.detach().t(), rtol=1e-5, atol=1e-5)

    fused = torch.cat([torch.randn(96, 64), torch.randn(32, 64)])
    member = torch.nn.Parameter(torch.empty(0))
    member.data = fused[:96]  # as fuse_projections makes a module's weight a view of the fused tensor
    with torch.inference_mode():
        native_linear.linear(x, fused, None, (member,), packed)
    with torch.no_grad():
        member.mul_(-1.0)  # bumps the member's version counter, not the fused tensor's
    assert fused._version == 0
    with torch.inference_mode():
        torch.testing.assert_close(native_linear.linear(x, fused, None, (member,), packed), x @ fused.t(), rtol=1e-5, atol=1e-5)


def test_packed_copies_go_with_their_weights_and_autograd_uses_f_linear():
    packed = native_linear.PackedWeights()
    if not packed.enabled:
        pytest.skip("this PyTorch build has no oneDNN linear")
    x = torch.randn(32, 64)
    weight = torch.randn(96, 64)
    native_linear.linear(x, weight, packed=packed)
    assert id(weight) in packed._entries
    key = id(weight)
    del weight
    assert key not in packed._entries
    trained = torch.randn(96, 64, requires_grad=True)  # a training forward: gradients must flow
    out = native_linear.linear(x, trained, packed=packed)
    assert id(trained) not in packed._entries and out.requires_grad
    out.sum().backward()
    assert trained.grad is not None


def test_linear_leaves_other_dtypes_and_wrapped_layers_to_their_own_forward():
    x = torch.randn(4, 8, dtype=torch.bfloat16)
    layer = torch.nn.Linear(8, 3).to(torch.bfloat16)
    assert torch.equal(native_linear.apply_linear(layer, x), layer(x))

    class Wrapped(torch.nn.Linear):  # e.g. a LoRA layer: its forward is not the plain product
        def forward(self, x):
            return super().forward(x) + 1

    wrapped = Wrapped(8, 3)
    x = torch.randn(4, 8)
    assert torch.equal(native_linear.apply_linear(wrapped, x), wrapped(x))


def _lora_layer(dropout: float = 0.0, **config):
    """A peft LoRA-wrapped ``nn.Linear(64, 96)`` whose adapter is not a no-op, in eval mode."""
    from peft import LoraConfig, get_peft_model

    class One(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(64, 96)

    torch.manual_seed(0)
    wrapped = get_peft_model(
        One(), LoraConfig(r=4, target_modules=["proj"], init_lora_weights=False, lora_dropout=dropout, **config)
    )
    return wrapped.base_model.model.proj.eval()


@pytest.mark.parametrize("rows", [1, 4, 32, 200])
def test_a_lora_layer_runs_its_base_product_through_linear_and_adds_its_adapter(rows):
    layer = _lora_layer()
    x = torch.randn(rows, 64, generator=torch.Generator().manual_seed(rows))
    adapters = native_linear.lora_adapters(layer, x.dtype)
    assert adapters is not None and len(adapters) == 1 and adapters[0][3] == layer.scaling["default"]
    with torch.no_grad():
        expected = layer(x)
        torch.testing.assert_close(native_linear.apply_linear(layer, x), expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(expected, layer.base_layer(x), atol=1e-3)  # the adapter matters


def test_adapters_are_taken_only_where_peft_s_forward_is_base_plus_adapters():
    layer = _lora_layer(dropout=0.5)
    assert native_linear.lora_adapters(layer, torch.float32)  # eval mode: dropout is off
    layer.train()
    assert native_linear.lora_adapters(layer, torch.float32) is None  # dropout on: peft's own forward
    layer.eval()
    assert native_linear.lora_adapters(layer, torch.bfloat16) is None  # peft would cast the input
    layer.enable_adapters(False)
    assert native_linear.lora_adapters(layer, torch.float32) == []
    layer.enable_adapters(True)
    layer.merge()
    assert native_linear.lora_adapters(layer, torch.float32) == []  # the base weights hold the adapter
    x = torch.randn(8, 64)
    with torch.no_grad():
        torch.testing.assert_close(native_linear.apply_linear(layer, x), layer(x), rtol=1e-5, atol=1e-5)
    assert native_linear.lora_adapters(_lora_layer(use_dora=True), torch.float32) is None
    assert native_linear.lora_adapters(torch.nn.Linear(4, 4), torch.float32) is None
