"""What more than one program uses: exit statuses, and (see docs/architecture.md) the shared rooms."""
