"""hiveagent: host-side metrics agent for KVM/QEMU clouds."""

__version__ = "0.1.0"
