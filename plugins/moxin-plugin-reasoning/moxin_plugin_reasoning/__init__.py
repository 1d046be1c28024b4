"""moxin-plugin-reasoning: GRPO with verifiable rewards, the Moxin-Reasoning variants."""

__version__ = "0.1.0"
