"""Stand-in for light-the-torch (ltt), the tool the PyTorch extension installs torch with.

The one piece of the extension route that cannot run here. Real ltt 0.8.1 (tried in a
throwaway venv: ``python -m light_the_torch install --pytorch-computation-backend=cpu
torch==2.13.0 --find-links /opt/wheels``) replaces pip's sources for torch, torchvision and
their dependencies with PyTorch's own package index, --find-links included; that index is
unreachable from these machines, so it fails on torch's first dependency. This stand-in does
what ltt does on a computer without an NVIDIA GPU: ``pip install`` of the same requirements
with the CPU build of torch, here the local CPU wheel named by LTT_STANDIN_CPU_WHEEL.
"""
