from chunkd.cli import main

raise SystemExit(main())
