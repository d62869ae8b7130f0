"""One Session class per backend (see base.Session); picked through edgecls.formats."""
