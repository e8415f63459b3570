"""The regionlock process: settings, lifecycle, workers, edge, auth, metrics, the check and admin servicers."""
