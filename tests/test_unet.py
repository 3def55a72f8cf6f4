import pytest
import torch

from genlab.nn import UNet


@pytest.mark.parametrize("size,mults,attn", [(8, (1, 2), (4,)), (28, (1, 2, 2), (7,)), (28, (1, 2, 2, 2), (8,)),
                                             (32, (1, 2, 2), (16,)), (64, (1, 2, 2, 2), (8,))])
def test_shapes_at_supported_sizes(size, mults, attn):
    m = UNet(in_channels=3, image_size=size, width=8, channel_mults=mults, num_res_blocks=1, attn_resolutions=attn,
             num_classes=10)
    x = torch.randn(2, 3, size, size)
    out = m(x, torch.tensor([3, 900]), torch.tensor([1, 10]))
    assert out.shape == x.shape
    assert m.padded % m.factor == 0 and m.padded - size < m.factor


def test_padding_rule_28_with_four_levels():
    m = UNet(image_size=28, width=8, channel_mults=(1, 2, 2, 2), num_res_blocks=1, attn_resolutions=())
    assert m.padded == 32


def test_class_embedding_and_null_class():
    m = UNet(image_size=8, width=8, num_res_blocks=1, num_classes=3)
    for p in m.parameters():  # residual branches and the output layer start at zero
        torch.nn.init.normal_(p, std=0.1)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([5, 5])
    assert torch.allclose(m(x, t), m(x, t, torch.tensor([3, 3])))  # no label = the null class
    assert not torch.allclose(m(x, t, torch.tensor([0, 0])), m(x, t, torch.tensor([1, 1])))


def test_gradients_reach_every_parameter():
    m = UNet(image_size=8, width=8, num_res_blocks=1, num_classes=2)
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.1)
    m(torch.randn(2, 1, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 1])).square().sum().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing or missing == ["class_emb.weight"], missing
