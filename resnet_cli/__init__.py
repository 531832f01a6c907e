"""resnet-classify: ImageNet classification with the ResNet family, from the command line."""

__version__ = "0.1.0"
