"""moxin-plugin-vlm: vision-language models (prismatic recipe) for moxin."""

__version__ = "0.1.0"
