"""MONAI Label adapters: the only part of the package (with ``apps/``) that imports ``monailabel``."""
