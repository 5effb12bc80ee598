"""A small PyTorch CNN with a residual block, for `--torch torchnet:build --prune`: the shape of what users prune
(a skip connection torch-pruning must keep consistent, BatchNorm after each conv, a Linear head that must stay
whole). `finetune` is the user's hook: a few SGD steps on random data, and a marker file that proves it ran."""
import os

import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, labels=3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(32, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                                   nn.Conv2d(32, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32))
        self.down = nn.Sequential(nn.Conv2d(32, 64, 3, 2, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(64, labels)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        x = self.down(x)
        return self.head(torch.flatten(self.pool(x), 1))


def build():
    torch.manual_seed(0)
    return Net()


def finetune(model):
    torch.manual_seed(1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    for _ in range(3):
        x = torch.randn(4, 1, 64, 64)
        loss = nn.functional.cross_entropy(model(x), torch.randint(0, 3, (4,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    marker = os.environ.get("TORCHNET_FINETUNED")
    if marker:
        open(marker, "w").write("fine-tuned\n")
    return model
