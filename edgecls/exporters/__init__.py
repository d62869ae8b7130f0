"""One module per format; each has `export(source, spec, out, *, precision, calibration,
options) -> Path` and is reached through edgecls.formats."""
