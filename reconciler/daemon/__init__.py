"""The daemon: `reconciler run`, passes on a schedule, on edits, on SIGHUP and on webhooks."""
