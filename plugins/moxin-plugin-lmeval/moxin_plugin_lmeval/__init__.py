"""moxin-plugin-lmeval: ``moxin eval`` through lm-evaluation-harness."""
