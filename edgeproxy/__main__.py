from edgeproxy import cli

raise SystemExit(cli.main())
