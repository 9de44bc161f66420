"""hesskit: second-order derivatives of neural networks and the optimizers that use them."""

__version__ = "0.1.0"
