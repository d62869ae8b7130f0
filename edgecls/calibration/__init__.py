"""Images in, model inputs out: decoding, preprocessing, and the datasets used for
calibration and validation. Nothing here imports torch."""
