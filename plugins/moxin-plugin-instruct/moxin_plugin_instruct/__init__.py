"""moxin-plugin-instruct: supervised fine-tuning and DPO for the Moxin chat models."""

__version__ = "0.1.0"
