"""The gateway's routes, one module per resource: slides, jobs, results, and storage events."""
