"""prefselect: select the preference pairs worth training on for one model, then train it with DPO."""

__version__ = "0.1.0"
