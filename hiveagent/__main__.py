from hiveagent.cli import main

raise SystemExit(main())
