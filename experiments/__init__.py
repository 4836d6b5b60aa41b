"""Experiments that never shipped as a default (`experiments/README.md`). Nothing in `restoration/` or `feedback/`
imports them; they import the product."""
