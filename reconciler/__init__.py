"""reconciler: keeps the persons of an organisation in sync on the systems that must know them."""

__version__ = "0.1.0"
