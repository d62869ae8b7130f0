"""Images in, model inputs out: decoding and the one preprocessing function (preprocess.py),
the image sets of every role - calibration, selection, verification (datasets.py) - and the
preprocessing a user states for a model (options.py). Nothing here imports torch."""
