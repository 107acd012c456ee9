"""radcascade: organ -> lesion -> classifier cascade for MONAI Label."""

__version__ = "0.1.0"
