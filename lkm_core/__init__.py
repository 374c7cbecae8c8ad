"""lkm_core: the LKM-UNet segmentation engine (no Slicer, no Qt)."""

__version__ = "0.1.0"
