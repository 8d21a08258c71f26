from fastdisco.cli import main

raise SystemExit(main())
