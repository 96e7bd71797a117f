"""shenhe (审核): detect prohibited content in Chinese text."""

__version__ = "0.1.0"
