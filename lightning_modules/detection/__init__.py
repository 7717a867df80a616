"""Object detection: detectors, decoding and evaluation."""
