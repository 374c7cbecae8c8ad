"""Imported by the PyTorch extension (``import light_the_torch._patch``) to check that ltt is
installed; the real module patches pip, which the stand-in's CLI does not need."""
