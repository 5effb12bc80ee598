"""The road with pruning: the ResNet-18 that road_resnet18.py trained, pruned by `bedside-model build --prune` and
fine-tuned by this module's hook. The two functions are what a user writes for their own model:

  build()          -> the trained torch.nn.Module (here: torchvision ResNet-18, 1-channel conv1, the road's checkpoint)
  finetune(model)  -> the pruned model trained a little more on the user's data (here: the factory's synthetic chest
                      phantoms, the road's augmentation, AdamW, ROAD_FINETUNE_STEPS steps of batch 16, 1 thread)

  cd models/factory && PYTHONPATH=../../tools/bedside-model ~/.cache/bedside-bench-venv/bin/python -m bedside_model \
      build --torch road_prune:build --example-shape 1,1,224,224 --prune 0.5 --finetune road_prune:finetune \
      --task classification --labels normal,pneumothorax,other --thresholds 0.5,0.25,0.25 --activation softmax \
      --id cxr-resnet18-p50 --version 1.0.0 --window dicom --mean 0.34 --std 0.27 --calib WORK/calib \
      --eval-data ../../tests/fixtures/eval/cxr-tiny-cls --max-drop 0.05 --out WORK/resnet18-p50

Environment: ROAD_CKPT (default /work/scratch/road/study/resnet18/resnet18-1ch.pt, written by road_resnet18.sh),
ROAD_FINETUNE_STEPS (default 40), CACHE (the factory's data cache, data.py).
"""
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
os.environ.setdefault("CACHE", os.path.expanduser("~/.cache/bedside-study/cache-cls"))

CKPT = os.environ.get("ROAD_CKPT", "/work/scratch/road/study/resnet18/resnet18-1ch.pt")


def build():
    import per_channel_study as S
    model = S.resnet18_1ch()
    model.load_state_dict(torch.load(CKPT)["state"])
    return model


def finetune(model):
    import data
    import train_export as TE
    TE.setup(threads=1)
    xtr, ytr = data.load("train")
    xt, yt = torch.from_numpy(xtr), torch.from_numpy(ytr)
    steps, batch = int(os.environ.get("ROAD_FINETUNE_STEPS", "40")), 16
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-4)
    lossf = torch.nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(TE.SEED + 1)
    perm = torch.randperm(len(xtr), generator=g)
    model.train()
    for s in range(steps):
        idx = perm[(s * batch) % len(xtr):(s * batch) % len(xtr) + batch]
        a = 1 + 0.1 * (torch.rand(len(idx), 1, 1, 1, generator=g) - 0.5)
        c = 0.1 * (torch.rand(len(idx), 1, 1, 1, generator=g) - 0.5)
        opt.zero_grad()
        loss = lossf(model(xt[idx] * a + c), yt[idx])
        loss.backward()
        opt.step()
        if (s + 1) % 10 == 0:
            print(f"[finetune] step {s + 1}/{steps} loss {loss.item():.4f}", flush=True)
    return model
