"""Data: record sources, tokenise-and-pack, the sharded batch stream, the Lightning datamodule."""
