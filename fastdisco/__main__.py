from fastdisco.cli.main import main

raise SystemExit(main())
