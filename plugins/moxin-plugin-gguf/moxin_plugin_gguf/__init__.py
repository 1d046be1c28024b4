"""moxin-plugin-gguf: export Moxin (Mistral-architecture) models to GGUF for llama.cpp."""

__version__ = "0.1.0"
