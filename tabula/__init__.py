"""tabula: declarative language-model training experiments."""
__version__ = "0.1.0"
