"dinof.losses with the package's own flows (API contract of dinof.flow) and image-shaped batches."
import math
import pytest
import torch
from dinof.core import bcast
from dinof.sde import VESDE, VPSDE, SubVPSDE
from dinof.losses import DiNofLoss, flow_input, flow_nll, sample_times

flow_mod = pytest.importorskip('dinof.flow')

class TinyScore(torch.nn.Module):
    def __init__(self, c): super().__init__(); self.conv = torch.nn.Conv2d(c, c, 3, padding=1)
    def forward(self, x, t): return self.conv(x) * bcast(1 + t.float(), x)

@pytest.mark.parametrize('sde,continuous', [(VPSDE(), True), (SubVPSDE(), True), (VESDE(), True), (VPSDE(), False), (VESDE(), False)])
def test_dinof_loss_with_glow(sde, continuous):
    torch.manual_seed(0)
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    flow = flow_mod.Glow(in_shape=(1, 8, 8), levels=1, depth=1, hidden=8)
    net = TinyScore(1)
    z = torch.randn_like(x)
    out = DiNofLoss(sde, 0.6, continuous=continuous)(x, net, flow, z=z, generator=torch.Generator().manual_seed(1))
    x_tm = flow_input(sde, x, z, 0.6, continuous)
    assert torch.allclose(out.flow_nll, -flow.log_prob(x_tm).mean(), rtol=1e-5, atol=1e-4)
    assert math.isclose(out.flow_bpd.item(), out.flow_nll.item() / (64 * math.log(2)), rel_tol=1e-6)
    out.loss.backward()
    assert all(p.grad is not None for p in net.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in flow.parameters())

def test_flow_alone_on_a_frozen_score_net():
    x = torch.randn(16, 2)
    flow = flow_mod.CouplingFlow(dim=2, depth=2, hidden=8)
    score = torch.nn.Linear(2, 2)
    out = DiNofLoss(VPSDE(), 0.6, w_score=0.)(x, lambda x, t: score(x), flow, generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert out.score_loss is None and out.t is None and all(p.grad is None for p in score.parameters())
    assert torch.allclose(out.loss.detach(), out.flow_nll)

def test_times_never_exceed_t_m_in_float32():
    for sde in (VPSDE(), VESDE()):
        for faithful in (False, True):
            t = sample_times(sde, 1_000_000, start=0.6, faithful=faithful, generator=torch.Generator().manual_seed(0))
            assert t.dtype == torch.float32 and t.max() <= 0.6
