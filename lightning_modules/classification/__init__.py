"""Image classification: the LightningModule (module), its data (datamodule), the classic losses,
held-out evaluation (top-1/top-5, confusion matrix) and the transfer report (start, slope, asymptote)."""
