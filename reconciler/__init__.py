"""cni-reconciler: CNI plugins in Python and a declarative reconciler on top."""

__version__ = "0.1.0"
