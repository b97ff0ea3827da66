"""Backbones for Prime: the sub-token embedding, the text transformer and the image U-Net."""
