"""The seeds' usage code (shared/seeds/resnet-notes-ru.md), as a user would run it over a folder: one image at
a time, PIL + `weights.transforms()` + torchvision's model, softmax, sort. The baseline of the benchmark.

    python benchmarks/seed_loop.py CHECKPOINT FOLDER
"""

import sys
from pathlib import Path

import torch
from PIL import Image
from torchvision import models

checkpoint, folder = sys.argv[1], Path(sys.argv[2])
resnet_weights = models.ResNet50_Weights.DEFAULT
categories = resnet_weights.meta["categories"]
transforms = resnet_weights.transforms()
model = models.resnet50()
model.load_state_dict(torch.load(checkpoint, weights_only=True))  # the published weights, from a file
model.eval()

for path in sorted(folder.iterdir()):
    img = Image.open(path).convert("RGB")
    img = transforms(img).unsqueeze(0)
    with torch.no_grad():
        p = model(img).squeeze()
    res = p.softmax(dim=0).sort(descending=True)
    top = [(categories[i], float(v)) for v, i in zip(res.values[:5], res.indices[:5])]
    print(path.name, top[0][0], f"{top[0][1]:.4f}")
