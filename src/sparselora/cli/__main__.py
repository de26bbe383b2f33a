"""``python -m sparselora.cli`` (what ``accelerate launch -m sparselora.cli`` runs)."""

from sparselora.cli import main

raise SystemExit(main())
