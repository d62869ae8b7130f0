from edgecls.cli import run

run()
