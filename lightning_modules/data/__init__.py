"""Data: the synthetic generator and the preparation of raw data into training-ready form."""
