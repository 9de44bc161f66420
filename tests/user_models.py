"""Source of a small user model file for ``--model`` tests that run ``hesskit`` itself.

``TANH_MLP``: ``make()`` returns a 3-4-2 tanh MLP in float64, the mean squared error and
one batch of 16 samples, all from fixed seeds.
"""

TANH_MLP = '''
import torch
from torch import nn


def make():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, generator=generator, dtype=torch.float64)
    y = torch.randn(16, 2, generator=generator, dtype=torch.float64)
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double(), nn.MSELoss(), (x, y)
'''
