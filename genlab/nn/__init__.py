"""Backbones only: no method logic."""
from .unet import UNet
