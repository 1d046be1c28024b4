"""Data: record sources, the embedded generated corpus, tokenise-and-pack, the Lightning datamodule."""
