"""mitoscope: mitosis detection and Nottingham mitotic scoring for breast-cancer H&E slides."""

__version__ = "0.1.0"
