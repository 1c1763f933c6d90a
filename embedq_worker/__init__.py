"""embedq GPU worker: claims batches from the embedq server and computes them."""

__version__ = "0.1.0"
