from pinn_engine.cli import main

raise SystemExit(main())
