"""A user's model file and ImageFolder for the audit tests."""

import numpy as np
from PIL import Image

MODEL = '''
import torch.nn as nn


class SmallCNN(nn.Module):
    """Two 3x3 convolutions with BatchNorm, then a linear classifier."""

    def __init__(self, num_classes, channels, resolution):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * resolution * resolution, num_classes)

    def forward(self, x):
        x = self.bn1(self.conv1(x)).relu()
        x = self.bn2(self.conv2(x)).relu()
        return self.fc(x.flatten(1))
'''


def make_photos(root, counts=(("train", 6), ("test", 3))):
    """An ImageFolder tree root/{train,test}/{cats,dogs}/*.png of smooth 20 px images."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:20, 0:20]
    for split, n in counts:
        for label in ("cats", "dogs"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(n):
                img = (rng.uniform(0, 255, size=(1, 1, 3)) + 40 * np.sin(xx[..., None] / (3 + i))
                       + 30 * np.cos(yy[..., None] / 4))
                Image.fromarray(np.clip(img, 0, 255).astype("uint8")).save(folder / f"{i}.png")
