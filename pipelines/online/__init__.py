"""Online scoring: the champion over HTTP for one user at a time (docs/online.md)."""
