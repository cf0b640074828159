from ztpd.cli import main

raise SystemExit(main())
