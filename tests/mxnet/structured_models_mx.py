"""Gluon twins of tests/torch/structured_models.py: same attributes, so the structural parameter
names (``layer1.0.conv1.weight``, ``features.3.squeeze.weight``) are the torch ``state_dict`` keys
(batch norm leaves aside: ``gamma``/``beta``/``running_mean``/``running_var``). Loaded by path.
"""

from __future__ import annotations

from coreprune.mxnet import Fire, ShuffleUnit
from mxnet.gluon import HybridBlock, nn


class BasicBlock(HybridBlock):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, **kw) -> None:
        super().__init__(**kw)
        with self.name_scope():
            self.conv1 = nn.Conv2D(planes, 3, stride, 1, use_bias=False, in_channels=cin)
            self.bn1 = nn.BatchNorm(in_channels=planes)
            self.conv2 = nn.Conv2D(planes, 3, 1, 1, use_bias=False, in_channels=planes)
            self.bn2 = nn.BatchNorm(in_channels=planes)
            self.downsample = None
            if stride != 1 or cin != planes:
                self.downsample = nn.HybridSequential()
                self.downsample.add(
                    nn.Conv2D(planes, 1, stride, use_bias=False, in_channels=cin),
                    nn.BatchNorm(in_channels=planes),
                )

    def hybrid_forward(self, F, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(HybridBlock):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, **kw) -> None:
        super().__init__(**kw)
        out = planes * 4
        with self.name_scope():
            self.conv1 = nn.Conv2D(planes, 1, use_bias=False, in_channels=cin)
            self.bn1 = nn.BatchNorm(in_channels=planes)
            self.conv2 = nn.Conv2D(planes, 3, stride, 1, use_bias=False, in_channels=planes)
            self.bn2 = nn.BatchNorm(in_channels=planes)
            self.conv3 = nn.Conv2D(out, 1, use_bias=False, in_channels=planes)
            self.bn3 = nn.BatchNorm(in_channels=out)
            self.downsample = None
            if stride != 1 or cin != out:
                self.downsample = nn.HybridSequential()
                self.downsample.add(
                    nn.Conv2D(out, 1, stride, use_bias=False, in_channels=cin), nn.BatchNorm(in_channels=out)
                )

    def hybrid_forward(self, F, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + identity)


class ResNet(HybridBlock):
    def __init__(self, block, layers, width: int = 64, num_classes: int = 1000, **kw) -> None:
        super().__init__(**kw)
        with self.name_scope():
            self.conv1 = nn.Conv2D(width, 7, 2, 3, use_bias=False, in_channels=3)
            self.bn1 = nn.BatchNorm(in_channels=width)
            self.maxpool = nn.MaxPool2D(3, 2, 1)
            cin = width
            stages = []
            for i, n in enumerate(layers):
                stage = nn.HybridSequential()
                for j in range(n):
                    stage.add(block(cin, width * 2**i, 2 if (j == 0 and i > 0) else 1))
                    cin = width * 2**i * block.expansion
                stages.append(stage)
            self.layer1, self.layer2, self.layer3, self.layer4 = stages
            self.fc = nn.Dense(num_classes, in_units=cin)

    def hybrid_forward(self, F, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(F.mean(x, axis=(2, 3)))


def resnet18(width: int = 64, num_classes: int = 1000) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], width, num_classes)


def resnet50(width: int = 64, num_classes: int = 1000) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], width, num_classes)


class ReLU6(HybridBlock):
    """torch's ReLU6 (Gluon 1.9 has no block for it): ``clip(x, 0, 6)``."""

    def hybrid_forward(self, F, x):
        return F.clip(x, 0.0, 6.0)


class InvertedResidual(HybridBlock):
    def __init__(self, cin: int, cout: int, stride: int, expand: int, **kw) -> None:
        super().__init__(**kw)
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        with self.name_scope():
            self.conv = nn.HybridSequential()
            if expand != 1:
                self.conv.add(
                    nn.Conv2D(hidden, 1, use_bias=False, in_channels=cin),
                    nn.BatchNorm(in_channels=hidden),
                    ReLU6(),
                )
            self.conv.add(
                nn.Conv2D(hidden, 3, stride, 1, groups=hidden, use_bias=False, in_channels=hidden),
                nn.BatchNorm(in_channels=hidden),
                ReLU6(),
                nn.Conv2D(cout, 1, use_bias=False, in_channels=hidden),
                nn.BatchNorm(in_channels=cout),
            )

    def hybrid_forward(self, F, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(HybridBlock):
    SETTINGS = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, width: float = 1.0, num_classes: int = 1000, **kw) -> None:
        super().__init__(**kw)
        cin = int(32 * width)
        last = max(1280, int(1280 * width))
        with self.name_scope():
            self.features = nn.HybridSequential()
            stem = nn.HybridSequential()
            stem.add(
                nn.Conv2D(cin, 3, 2, 1, use_bias=False, in_channels=3),
                nn.BatchNorm(in_channels=cin),
                ReLU6(),
            )
            self.features.add(stem)
            for t, c, n, s in self.SETTINGS:
                cout = int(c * width)
                for i in range(n):
                    self.features.add(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                    cin = cout
            head = nn.HybridSequential()
            head.add(
                nn.Conv2D(last, 1, use_bias=False, in_channels=cin),
                nn.BatchNorm(in_channels=last),
                ReLU6(),
            )
            self.features.add(head)
            self.classifier = nn.HybridSequential()
            self.classifier.add(nn.Dropout(0.2), nn.Dense(num_classes, in_units=last))

    def hybrid_forward(self, F, x):
        x = F.Pooling(self.features(x), global_pool=True, kernel=(1, 1), pool_type="avg")
        return self.classifier(F.flatten(x))


class SqueezeNet(HybridBlock):
    def __init__(self, num_classes: int = 1000, **kw) -> None:
        super().__init__(**kw)
        with self.name_scope():
            self.features = nn.HybridSequential()
            self.features.add(
                nn.Conv2D(64, 3, 2, in_channels=3),
                nn.Activation("relu"),
                nn.MaxPool2D(3, 2, ceil_mode=True),
                Fire(64, 16, 64, 64),
                Fire(128, 16, 64, 64),
                nn.MaxPool2D(3, 2, ceil_mode=True),
                Fire(128, 32, 128, 128),
                Fire(256, 32, 128, 128),
                nn.MaxPool2D(3, 2, ceil_mode=True),
                Fire(256, 48, 192, 192),
                Fire(384, 48, 192, 192),
                Fire(384, 64, 256, 256),
                Fire(512, 64, 256, 256),
            )
            self.classifier = nn.HybridSequential()
            self.classifier.add(
                nn.Dropout(0.5),
                nn.Conv2D(num_classes, 1, in_channels=512),
                nn.Activation("relu"),
                nn.GlobalAvgPool2D(),
            )

    def hybrid_forward(self, F, x):
        return F.flatten(self.classifier(self.features(x)))


class ShuffleNetSmall(HybridBlock):
    def __init__(self, num_classes: int = 10, **kw) -> None:
        super().__init__(**kw)
        with self.name_scope():
            self.stem = nn.Conv2D(24, 3, 2, 1, use_bias=False, in_channels=3)
            self.bn = nn.BatchNorm(in_channels=24)
            self.units = nn.HybridSequential()
            self.units.add(ShuffleUnit(24, 12, 3), ShuffleUnit(24, 12, 3))
            self.head = nn.Conv2D(16, 1, in_channels=24)
            self.pool = nn.AvgPool2D(4)
            self.fc = nn.Dense(num_classes, in_units=16 * 4)

    def hybrid_forward(self, F, x):
        x = self.units(F.relu(self.bn(self.stem(x))))
        return self.fc(self.pool(F.relu(self.head(x))))
