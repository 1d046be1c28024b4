"""Training objectives. The LightningModule only calls an objective; the maths lives here."""
