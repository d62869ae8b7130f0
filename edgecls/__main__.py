from edgecls.cli import main

raise SystemExit(main())
