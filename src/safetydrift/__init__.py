"""safetydrift: measure how benign fine-tuning wears away the safety of a chat model."""

__version__ = "0.1.0"
