"""tunesmith: fine-tune pretrained models - full, partial, new heads, and more - correctly on modest hardware."""

__version__ = "0.1.0"
